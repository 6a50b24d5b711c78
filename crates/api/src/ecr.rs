//! Amazon ECR's wire format (awsJson 1.1, `AmazonEC2ContainerRegistry_V20150921.*`): the
//! request and response shapes of the actions Flotilla's registry implements, and the
//! registry's error enum with ECR's exception names. The registry crate executes them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// `X-Amz-Target`'s prefix for ECR.
pub const ECR_TARGET_PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921";
/// The largest ECR request body (UploadLayerPart carries a base64 layer part).
pub const ECR_REQUEST_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Decodes a request body; an empty body is `{}`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, EcrError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        EcrError::Validation(format!("Invalid request at '{}': {}", e.path(), e.inner()))
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Why an ECR action failed, with ECR's exception names (all HTTP 400 but `Server`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EcrError {
    #[error("{0}")]
    RepositoryNotFound(String),
    #[error("{0}")]
    RepositoryAlreadyExists(String),
    #[error("{0}")]
    RepositoryNotEmpty(String),
    #[error("{0}")]
    ImageNotFound(String),
    #[error("{0}")]
    ImageTagAlreadyExists(String),
    #[error("{0}")]
    ImageAlreadyExists(String),
    #[error("{0}")]
    ImageDigestDoesNotMatch(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    InvalidTagParameter(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    LifecyclePolicyNotFound(String),
    #[error("{0}")]
    RepositoryPolicyNotFound(String),
    #[error("{0}")]
    LayersNotFound(String),
    #[error("{0}")]
    LayerInaccessible(String),
    #[error("{0}")]
    UploadNotFound(String),
    #[error("{0}")]
    InvalidLayer(String),
    #[error("{0}")]
    InvalidLayerPart(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    ReferencedImagesNotFound(String),
    #[error("{0}")]
    UnsupportedOperation(String),
    #[error("{0}")]
    Server(String),
}

impl EcrError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::RepositoryNotFound(_) => "RepositoryNotFoundException",
            Self::RepositoryAlreadyExists(_) => "RepositoryAlreadyExistsException",
            Self::RepositoryNotEmpty(_) => "RepositoryNotEmptyException",
            Self::ImageNotFound(_) => "ImageNotFoundException",
            Self::ImageTagAlreadyExists(_) => "ImageTagAlreadyExistsException",
            Self::ImageAlreadyExists(_) => "ImageAlreadyExistsException",
            Self::ImageDigestDoesNotMatch(_) => "ImageDigestDoesNotMatchException",
            Self::InvalidParameter(_) => "InvalidParameterException",
            Self::InvalidTagParameter(_) => "InvalidTagParameterException",
            Self::Validation(_) => "ValidationException",
            Self::LifecyclePolicyNotFound(_) => "LifecyclePolicyNotFoundException",
            Self::RepositoryPolicyNotFound(_) => "RepositoryPolicyNotFoundException",
            Self::LayersNotFound(_) => "LayersNotFoundException",
            Self::LayerInaccessible(_) => "LayerInaccessibleException",
            Self::UploadNotFound(_) => "UploadNotFoundException",
            Self::InvalidLayer(_) => "InvalidLayerException",
            Self::InvalidLayerPart(_) => "InvalidLayerPartException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::ReferencedImagesNotFound(_) => "ReferencedImagesNotFoundException",
            Self::UnsupportedOperation(_) => "UnsupportedCommandException",
            Self::Server(_) => "ServerException",
        }
    }
}

impl From<EcrError> for ApiError {
    fn from(error: EcrError) -> Self {
        let status = if matches!(error, EcrError::Server(_)) {
            500
        } else {
            400
        };
        ApiError::new(error.code(), status, error.to_string())
    }
}

/// Seconds since the epoch with milliseconds, as awsJson timestamps are sent.
pub fn timestamp(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value", default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ImageIdentifier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageScanningConfiguration {
    #[serde(default)]
    pub scan_on_push: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfiguration {
    pub encryption_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagStatusFilter {
    #[serde(default)]
    pub tag_status: Option<String>,
}

// ---- requests ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRepositoryRequest {
    #[serde(default)]
    pub registry_id: Option<String>,
    pub repository_name: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub image_tag_mutability: Option<String>,
    #[serde(default)]
    pub image_scanning_configuration: Option<ImageScanningConfiguration>,
    #[serde(default)]
    pub encryption_configuration: Option<EncryptionConfiguration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeRepositoriesRequest {
    #[serde(default)]
    pub registry_id: Option<String>,
    #[serde(default)]
    pub repository_names: Option<Vec<String>>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<usize>,
}

/// Requests that name one repository and maybe more (most of them).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRequest {
    #[serde(default)]
    pub registry_id: Option<String>,
    pub repository_name: String,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub image_ids: Option<Vec<ImageIdentifier>>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<usize>,
    #[serde(default)]
    pub filter: Option<TagStatusFilter>,
    #[serde(default)]
    pub accepted_media_types: Option<Vec<String>>,
    #[serde(default)]
    pub image_tag_mutability: Option<String>,
    #[serde(default)]
    pub lifecycle_policy_text: Option<String>,
    #[serde(default)]
    pub policy_text: Option<String>,
    #[serde(default)]
    pub layer_digests: Option<Vec<String>>,
    #[serde(default)]
    pub layer_digest: Option<String>,
    #[serde(default)]
    pub upload_id: Option<String>,
    #[serde(default)]
    pub part_first_byte: Option<u64>,
    #[serde(default)]
    pub part_last_byte: Option<u64>,
    /// Base64, as awsJson sends blobs.
    #[serde(default)]
    pub layer_part_blob: Option<String>,
    #[serde(default)]
    pub image_manifest: Option<String>,
    #[serde(default)]
    pub image_manifest_media_type: Option<String>,
    #[serde(default)]
    pub image_tag: Option<String>,
    #[serde(default)]
    pub image_digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagResourceRequest {
    pub resource_arn: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub tag_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAuthorizationTokenRequest {
    #[serde(default)]
    pub registry_ids: Option<Vec<String>>,
}

// ---- responses ----

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    pub repository_arn: String,
    pub registry_id: String,
    pub repository_name: String,
    pub repository_uri: String,
    pub created_at: f64,
    pub image_tag_mutability: String,
    pub image_scanning_configuration: ImageScanningConfiguration,
    pub encryption_configuration: EncryptionConfiguration,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDetail {
    pub registry_id: String,
    pub repository_name: String,
    pub image_digest: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_tags: Vec<String>,
    pub image_size_in_bytes: u64,
    pub image_pushed_at: f64,
    pub image_manifest_media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_recorded_pull_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_manifest_digest: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub registry_id: String,
    pub repository_name: String,
    pub image_id: ImageIdentifier,
    pub image_manifest: String,
    pub image_manifest_media_type: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFailure {
    pub image_id: ImageIdentifier,
    pub failure_code: String,
    pub failure_reason: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub layer_digest: String,
    pub layer_availability: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerFailure {
    pub layer_digest: String,
    pub failure_code: String,
    pub failure_reason: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationData {
    pub authorization_token: String,
    pub expires_at: f64,
    pub proxy_endpoint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_and_errors_map() {
        let request: RepositoryRequest =
            decode(br#"{"repositoryName":"app","imageIds":[{"imageTag":"v1"}]}"#).unwrap();
        assert_eq!(request.repository_name, "app");
        assert!(decode::<RepositoryRequest>(b"{}").is_err());
        let error: ApiError = EcrError::ImageTagAlreadyExists("x".into()).into();
        assert_eq!(error.code, "ImageTagAlreadyExistsException");
        assert_eq!(error.status, 400);
    }
}
