//! What can go wrong in the registry core; the OCI handlers and the ECR API each map it to
//! their own wire codes (`oci::OciError`, `flotilla_api::ecr::EcrError`).

use crate::blobs::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("The repository with name '{0}' does not exist in the registry.")]
    RepositoryNotFound(String),
    #[error("The repository with name '{0}' already exists in the registry.")]
    RepositoryAlreadyExists(String),
    #[error(
        "The repository with name '{0}' cannot be deleted because it still contains images; use force to delete them too."
    )]
    RepositoryNotEmpty(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    #[error("{0}")]
    UploadInvalid(String),
    /// A chunk does not start where the upload ends.
    #[error("the chunk starts at byte {start} but the upload has {size} bytes")]
    RangeInvalid { start: u64, size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("the content's digest {actual} does not match the given digest {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest references a blob or manifest the repository does not have: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error(
        "The image tag '{tag}' already exists in the '{repository}' repository and cannot be overwritten because the repository is immutable."
    )]
    TagImmutable { tag: String, repository: String },
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("The lifecycle policy could not be found for the repository '{0}'.")]
    LifecyclePolicyNotFound(String),
    #[error("Repository policy does not exist for the repository '{0}'.")]
    RepositoryPolicyNotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl From<BlobError> for RegistryError {
    fn from(error: BlobError) -> Self {
        match error {
            BlobError::TooLarge { limit } => {
                Self::TooLarge(format!("the blob exceeds the {limit}-byte limit"))
            }
            BlobError::Body(message) => Self::UploadInvalid(message),
            other => Self::Internal(other.to_string()),
        }
    }
}
