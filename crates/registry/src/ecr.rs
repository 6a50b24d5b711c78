//! The ECR API: executes `AmazonEC2ContainerRegistry_V20150921.*` actions on the registry
//! core. Wire shapes come from `flotilla_api::ecr`; this module decides.

use base64::Engine as _;
use flotilla_api::ecr::{
    self as wire, AuthorizationData, EcrError, EncryptionConfiguration, Image, ImageDetail,
    ImageFailure, ImageIdentifier, ImageScanningConfiguration, Layer, LayerFailure, Repository,
    RepositoryRequest, decode, encode, timestamp,
};
use serde_json::{Value, json};

use crate::Registry;
use crate::digest::Digest;
use crate::engine::{ImageView, MEDIA_DOCKER_MANIFEST, validate_tag};
use crate::error::RegistryError;
use crate::lifecycle;
use crate::meta::{RepositoryRecord, ResourceTag, Scope};
use crate::token;

/// Page size when the client gives no maxResults.
const PAGE_DEFAULT: usize = 100;
/// The largest page ECR accepts.
const PAGE_MAX: usize = 1000;
/// The part size InitiateLayerUpload suggests.
const LAYER_PART_BYTES: u64 = 10 * 1024 * 1024;
/// Tags per repository (ECR's limit).
const TAGS_MAX: usize = 50;

/// Who is asking, where, and at what time.
#[derive(Clone, Debug)]
pub struct EcrContext {
    pub scope: Scope,
    pub access_key_id: String,
    /// `host[:port]` clients push to, for repositoryUri and proxyEndpoint.
    pub registry_host: String,
    /// `https` or `http`, for proxyEndpoint and download URLs.
    pub scheme: &'static str,
    pub now_ms: i64,
}

impl From<RegistryError> for EcrError {
    fn from(error: RegistryError) -> Self {
        let message = error.to_string();
        match error {
            RegistryError::RepositoryNotFound(_) => Self::RepositoryNotFound(message),
            RegistryError::RepositoryAlreadyExists(_) => Self::RepositoryAlreadyExists(message),
            RegistryError::RepositoryNotEmpty(_) => Self::RepositoryNotEmpty(message),
            RegistryError::NameInvalid(_) | RegistryError::InvalidParameter(_) => {
                Self::InvalidParameter(message)
            }
            RegistryError::TagInvalid(_) => Self::InvalidParameter(message),
            RegistryError::BlobUnknown(_) => Self::LayersNotFound(message),
            RegistryError::UploadUnknown => Self::UploadNotFound(
                "The upload could not be found, or it belongs to another repository.".into(),
            ),
            RegistryError::UploadInvalid(_) | RegistryError::RangeInvalid { .. } => {
                Self::InvalidLayerPart(message)
            }
            RegistryError::DigestInvalid(_) | RegistryError::DigestMismatch { .. } => {
                Self::InvalidLayer(message)
            }
            RegistryError::ManifestInvalid(_) => Self::InvalidParameter(message),
            RegistryError::ManifestBlobUnknown(_) => Self::LayersNotFound(message),
            RegistryError::ManifestUnknown(_) => Self::ImageNotFound(message),
            RegistryError::TagImmutable { .. } => Self::ImageTagAlreadyExists(message),
            RegistryError::TooLarge(_) => Self::LimitExceeded(message),
            RegistryError::LifecyclePolicyNotFound(_) => Self::LifecyclePolicyNotFound(message),
            RegistryError::RepositoryPolicyNotFound(_) => Self::RepositoryPolicyNotFound(message),
            RegistryError::Internal(_) => Self::Server(message),
        }
    }
}

fn page_size(max_results: Option<usize>) -> Result<usize, EcrError> {
    match max_results {
        None => Ok(PAGE_DEFAULT),
        Some(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
        Some(n) => Err(EcrError::InvalidParameter(format!(
            "maxResults must be between 1 and {PAGE_MAX}, got {n}."
        ))),
    }
}

/// Items after `next_token` (the previous page's last key), one page of them, and the token
/// of the next page.
fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    next_token: Option<&str>,
    size: usize,
) -> (Vec<T>, Option<String>) {
    let mut rest: Vec<T> = match next_token {
        Some(token) => items
            .into_iter()
            .filter(|i| key(i).as_str() > token)
            .collect(),
        None => items,
    };
    let more = rest.len() > size;
    rest.truncate(size);
    let token = if more { rest.last().map(&key) } else { None };
    (rest, token)
}

fn check_mutability(value: &str) -> Result<(), EcrError> {
    match value {
        "MUTABLE" | "IMMUTABLE" => Ok(()),
        other => Err(EcrError::InvalidParameter(format!(
            "imageTagMutability must be MUTABLE or IMMUTABLE, got '{other}'."
        ))),
    }
}

impl Registry {
    fn repository_view(&self, ctx: &EcrContext, record: &RepositoryRecord) -> Repository {
        Repository {
            repository_arn: self.repository_arn(&ctx.scope, &record.name),
            registry_id: ctx.scope.account_id.clone(),
            repository_name: record.name.clone(),
            repository_uri: format!("{}/{}", ctx.registry_host, record.name),
            created_at: timestamp(record.created_at_ms),
            image_tag_mutability: record.image_tag_mutability.clone(),
            image_scanning_configuration: ImageScanningConfiguration {
                scan_on_push: record.scan_on_push,
            },
            encryption_configuration: EncryptionConfiguration {
                encryption_type: record.encryption_type.clone(),
                kms_key: record.kms_key.clone(),
            },
        }
    }

    pub fn repository_arn(&self, scope: &Scope, name: &str) -> String {
        format!(
            "arn:aws:ecr:{}:{}:repository/{name}",
            scope.region, scope.account_id
        )
    }

    fn image_detail(&self, ctx: &EcrContext, repo: &str, image: &ImageView) -> ImageDetail {
        let mut tags = image.tags.clone();
        tags.sort();
        ImageDetail {
            registry_id: ctx.scope.account_id.clone(),
            repository_name: repo.to_owned(),
            image_digest: image.record.digest.clone(),
            image_tags: tags,
            image_size_in_bytes: image.record.size_bytes,
            image_pushed_at: timestamp(image.record.pushed_at_ms),
            image_manifest_media_type: image.record.media_type.clone(),
            artifact_media_type: image.record.artifact_type.clone(),
            last_recorded_pull_time: image.record.last_pulled_at_ms.map(timestamp),
            subject_manifest_digest: image.record.subject.clone(),
        }
    }

    /// Executes one ECR action; `body` is the request JSON.
    pub async fn execute_ecr(
        &self,
        ctx: &EcrContext,
        action: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, EcrError> {
        match action {
            "GetAuthorizationToken" => self.get_authorization_token(ctx, body),
            "CreateRepository" => self.create_repository(ctx, body).await,
            "DescribeRepositories" => self.describe_repositories(ctx, body).await,
            "TagResource" | "UntagResource" | "ListTagsForResource" => {
                self.resource_tags(ctx, action, body).await
            }
            _ => {
                let request: RepositoryRequest = decode(body)?;
                self.repository_action(ctx, action, request).await
            }
        }
    }

    fn get_authorization_token(&self, ctx: &EcrContext, body: &[u8]) -> Result<Vec<u8>, EcrError> {
        let _: wire::GetAuthorizationTokenRequest = decode(body)?;
        let secret = flotilla_api::sigv4::CredentialsProvider::secret_for(
            &self.credentials,
            &ctx.access_key_id,
        )
        .ok_or_else(|| EcrError::Server("the signing key is no longer known".into()))?;
        let now_seconds = ctx.now_ms / 1000;
        let password = token::mint(&ctx.access_key_id, &secret, &ctx.scope.region, now_seconds);
        let data = AuthorizationData {
            authorization_token: base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", token::TOKEN_USER)),
            expires_at: (now_seconds + token::TOKEN_LIFETIME_SECONDS) as f64,
            proxy_endpoint: format!("{}://{}", ctx.scheme, ctx.registry_host),
        };
        Ok(encode(&json!({ "authorizationData": [data] })))
    }

    async fn create_repository(&self, ctx: &EcrContext, body: &[u8]) -> Result<Vec<u8>, EcrError> {
        let request: wire::CreateRepositoryRequest = decode(body)?;
        let mutability = request
            .image_tag_mutability
            .unwrap_or_else(|| "MUTABLE".into());
        check_mutability(&mutability)?;
        let encryption = request.encryption_configuration.unwrap_or_default();
        let encryption_type = if encryption.encryption_type.is_empty() {
            "AES256".to_owned()
        } else {
            encryption.encryption_type
        };
        if !matches!(encryption_type.as_str(), "AES256" | "KMS" | "KMS_DSSE") {
            return Err(EcrError::InvalidParameter(format!(
                "encryptionType must be AES256, KMS or KMS_DSSE, got '{encryption_type}'."
            )));
        }
        if request.tags.len() > TAGS_MAX {
            return Err(EcrError::InvalidTagParameter(format!(
                "A repository can have at most {TAGS_MAX} tags."
            )));
        }
        let record = RepositoryRecord {
            name: request.repository_name,
            created_at_ms: ctx.now_ms,
            image_tag_mutability: mutability,
            scan_on_push: request
                .image_scanning_configuration
                .is_some_and(|c| c.scan_on_push),
            encryption_type,
            kms_key: encryption.kms_key,
            tags: request
                .tags
                .into_iter()
                .map(|t| ResourceTag {
                    key: t.key,
                    value: t.value,
                })
                .collect(),
            policy_text: None,
            lifecycle_policy_text: None,
            lifecycle_evaluated_at_ms: None,
        };
        let record = self.engine.create_repository(&ctx.scope, record).await?;
        Ok(encode(
            &json!({ "repository": self.repository_view(ctx, &record) }),
        ))
    }

    async fn describe_repositories(
        &self,
        ctx: &EcrContext,
        body: &[u8],
    ) -> Result<Vec<u8>, EcrError> {
        let request: wire::DescribeRepositoriesRequest = decode(body)?;
        let size = page_size(request.max_results)?;
        let mut all = self.engine.repositories(&ctx.scope).await?;
        if let Some(names) = &request.repository_names {
            if request.next_token.is_some() || request.max_results.is_some() {
                return Err(EcrError::InvalidParameter(
                    "repositoryNames cannot be combined with nextToken or maxResults.".into(),
                ));
            }
            for name in names {
                if !all.iter().any(|r| &r.name == name) {
                    return Err(RegistryError::RepositoryNotFound(name.clone()).into());
                }
            }
            all.retain(|r| names.contains(&r.name));
        }
        let (page, next) = paginate(all, |r| r.name.clone(), request.next_token.as_deref(), size);
        let repositories: Vec<Repository> =
            page.iter().map(|r| self.repository_view(ctx, r)).collect();
        let mut out = json!({ "repositories": repositories });
        if let Some(next) = next {
            out["nextToken"] = Value::from(next);
        }
        Ok(encode(&out))
    }

    async fn resource_tags(
        &self,
        ctx: &EcrContext,
        action: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, EcrError> {
        let request: wire::TagResourceRequest = decode(body)?;
        let prefix = format!(
            "arn:aws:ecr:{}:{}:repository/",
            ctx.scope.region, ctx.scope.account_id
        );
        let name = request.resource_arn.strip_prefix(&prefix).ok_or_else(|| {
            EcrError::InvalidParameter(format!(
                "Invalid parameter at 'resourceArn': '{}' is not a repository ARN of this account and region.",
                request.resource_arn
            ))
        })?;
        let record = match action {
            "TagResource" => {
                self.engine
                    .update_repository(&ctx.scope, name, |r| {
                        for tag in &request.tags {
                            r.tags.retain(|t| t.key != tag.key);
                            r.tags.push(ResourceTag {
                                key: tag.key.clone(),
                                value: tag.value.clone(),
                            });
                        }
                        if r.tags.len() > TAGS_MAX {
                            return Err(RegistryError::InvalidParameter(format!(
                                "A repository can have at most {TAGS_MAX} tags."
                            )));
                        }
                        Ok(())
                    })
                    .await?
            }
            "UntagResource" => {
                self.engine
                    .update_repository(&ctx.scope, name, |r| {
                        r.tags.retain(|t| !request.tag_keys.contains(&t.key));
                        Ok(())
                    })
                    .await?
            }
            _ => self.engine.repository(&ctx.scope, name).await?.value,
        };
        if action == "ListTagsForResource" {
            let tags: Vec<wire::Tag> = record
                .tags
                .iter()
                .map(|t| wire::Tag {
                    key: t.key.clone(),
                    value: t.value.clone(),
                })
                .collect();
            Ok(encode(&json!({ "tags": tags })))
        } else {
            Ok(b"{}".to_vec())
        }
    }

    async fn repository_action(
        &self,
        ctx: &EcrContext,
        action: &str,
        request: RepositoryRequest,
    ) -> Result<Vec<u8>, EcrError> {
        let scope = &ctx.scope;
        let repo = request.repository_name.as_str();
        let registry_id = scope.account_id.clone();
        let engine = &self.engine;
        match action {
            "DeleteRepository" => {
                let record = engine
                    .delete_repository(scope, repo, request.force.unwrap_or(false))
                    .await?;
                Ok(encode(
                    &json!({ "repository": self.repository_view(ctx, &record) }),
                ))
            }
            "DescribeImages" => {
                let images = engine.images(scope, repo).await?;
                let selected: Vec<ImageView> = match &request.image_ids {
                    Some(ids) => {
                        let mut out = Vec::new();
                        for id in ids {
                            let found = images.iter().find(|i| matches_id(i, id)).ok_or_else(|| {
                                EcrError::ImageNotFound(format!(
                                    "The image with imageId {} does not exist within the repository with name '{repo}' in the registry with id '{registry_id}'",
                                    describe_id(id)
                                ))
                            })?;
                            if !out
                                .iter()
                                .any(|o: &ImageView| o.record.digest == found.record.digest)
                            {
                                out.push(found.clone());
                            }
                        }
                        out
                    }
                    None => filter_tag_status(images, request.filter.as_ref())?,
                };
                let size = page_size(request.max_results)?;
                let (page, next) = paginate(
                    selected,
                    |i| i.record.digest.clone(),
                    request.next_token.as_deref(),
                    size,
                );
                let details: Vec<ImageDetail> = page
                    .iter()
                    .map(|i| self.image_detail(ctx, repo, i))
                    .collect();
                let mut out = json!({ "imageDetails": details });
                if let Some(next) = next {
                    out["nextToken"] = Value::from(next);
                }
                Ok(encode(&out))
            }
            "ListImages" => {
                let images =
                    filter_tag_status(engine.images(scope, repo).await?, request.filter.as_ref())?;
                let mut ids: Vec<ImageIdentifier> = Vec::new();
                for image in images {
                    if image.tags.is_empty() {
                        ids.push(ImageIdentifier {
                            image_digest: Some(image.record.digest.clone()),
                            image_tag: None,
                        });
                    }
                    for tag in image.tags {
                        ids.push(ImageIdentifier {
                            image_digest: Some(image.record.digest.clone()),
                            image_tag: Some(tag),
                        });
                    }
                }
                ids.sort();
                let size = page_size(request.max_results)?;
                let (page, next) = paginate(
                    ids,
                    |i| {
                        format!(
                            "{}/{}",
                            i.image_digest.clone().unwrap_or_default(),
                            i.image_tag.clone().unwrap_or_default()
                        )
                    },
                    request.next_token.as_deref(),
                    size,
                );
                let mut out = json!({ "imageIds": page });
                if let Some(next) = next {
                    out["nextToken"] = Value::from(next);
                }
                Ok(encode(&out))
            }
            "BatchGetImage" => {
                let ids = request.image_ids.unwrap_or_default();
                let images = engine.images(scope, repo).await?;
                let mut found = Vec::new();
                let mut failures = Vec::new();
                for id in ids {
                    match images.iter().find(|i| matches_id(i, &id)) {
                        Some(image) => {
                            if let Some(accepted) = &request.accepted_media_types
                                && !accepted.contains(&image.record.media_type)
                            {
                                failures.push(ImageFailure {
                                    image_id: id,
                                    failure_code: "UnsupportedImageType".into(),
                                    failure_reason:
                                        "The image's media type is not among acceptedMediaTypes"
                                            .into(),
                                });
                                continue;
                            }
                            let manifest =
                                engine.manifest(scope, repo, &image.record.digest).await?;
                            found.push(Image {
                                registry_id: registry_id.clone(),
                                repository_name: repo.to_owned(),
                                image_id: ImageIdentifier {
                                    image_digest: Some(manifest.digest),
                                    image_tag: id.image_tag.clone(),
                                },
                                image_manifest: String::from_utf8_lossy(&manifest.bytes)
                                    .into_owned(),
                                image_manifest_media_type: manifest.media_type,
                            });
                        }
                        None => failures.push(ImageFailure {
                            image_id: id,
                            failure_code: "ImageNotFound".into(),
                            failure_reason: "Requested image not found".into(),
                        }),
                    }
                }
                Ok(encode(&json!({ "images": found, "failures": failures })))
            }
            "BatchDeleteImage" => {
                let ids = request.image_ids.unwrap_or_default();
                let images = engine.images(scope, repo).await?;
                let mut deleted_ids = Vec::new();
                let mut failures = Vec::new();
                for id in ids {
                    let Some(image) = images.iter().find(|i| matches_id(i, &id)) else {
                        failures.push(ImageFailure {
                            image_id: id,
                            failure_code: "ImageNotFound".into(),
                            failure_reason: "Requested image not found".into(),
                        });
                        continue;
                    };
                    // A tag given alone removes that tag; the image goes with its last tag.
                    if let Some(tag) = &id.image_tag
                        && id.image_digest.is_none()
                        && image.tags.len() > 1
                    {
                        engine.delete_tag(scope, repo, tag).await?;
                    } else {
                        engine
                            .delete_images(scope, repo, std::slice::from_ref(&image.record.digest))
                            .await?;
                    }
                    deleted_ids.push(ImageIdentifier {
                        image_digest: Some(image.record.digest.clone()),
                        image_tag: id.image_tag.clone(),
                    });
                }
                Ok(encode(
                    &json!({ "imageIds": deleted_ids, "failures": failures }),
                ))
            }
            "PutImageTagMutability" => {
                let mutability = request.image_tag_mutability.unwrap_or_default();
                check_mutability(&mutability)?;
                engine
                    .update_repository(scope, repo, |r| {
                        r.image_tag_mutability = mutability.clone();
                        Ok(())
                    })
                    .await?;
                Ok(encode(&json!({
                    "registryId": registry_id, "repositoryName": repo, "imageTagMutability": mutability
                })))
            }
            "PutLifecyclePolicy" => {
                let text = request.lifecycle_policy_text.unwrap_or_default();
                lifecycle::parse(&text).map_err(EcrError::InvalidParameter)?;
                engine
                    .update_repository(scope, repo, |r| {
                        r.lifecycle_policy_text = Some(text.clone());
                        Ok(())
                    })
                    .await?;
                engine.apply_lifecycle(scope, repo, ctx.now_ms).await?;
                Ok(encode(&json!({
                    "registryId": registry_id, "repositoryName": repo, "lifecyclePolicyText": text
                })))
            }
            "GetLifecyclePolicy" | "DeleteLifecyclePolicy" => {
                let record = engine.repository(scope, repo).await?.value;
                let text = record
                    .lifecycle_policy_text
                    .clone()
                    .ok_or_else(|| RegistryError::LifecyclePolicyNotFound(repo.to_owned()))?;
                if action == "DeleteLifecyclePolicy" {
                    engine
                        .update_repository(scope, repo, |r| {
                            r.lifecycle_policy_text = None;
                            Ok(())
                        })
                        .await?;
                }
                let mut out = json!({
                    "registryId": registry_id, "repositoryName": repo, "lifecyclePolicyText": text
                });
                if let Some(at) = record.lifecycle_evaluated_at_ms {
                    out["lastEvaluatedAt"] = Value::from(timestamp(at));
                }
                Ok(encode(&out))
            }
            "SetRepositoryPolicy" => {
                let text = request.policy_text.unwrap_or_default();
                let parsed: Value = serde_json::from_str(&text).map_err(|e| {
                    EcrError::InvalidParameter(format!("Invalid repository policy provided: {e}"))
                })?;
                if parsed.get("Statement").is_none() {
                    return Err(EcrError::InvalidParameter(
                        "Invalid repository policy provided: it needs a Statement.".into(),
                    ));
                }
                engine
                    .update_repository(scope, repo, |r| {
                        r.policy_text = Some(text.clone());
                        Ok(())
                    })
                    .await?;
                Ok(encode(&json!({
                    "registryId": registry_id, "repositoryName": repo, "policyText": text
                })))
            }
            "GetRepositoryPolicy" | "DeleteRepositoryPolicy" => {
                let record = engine.repository(scope, repo).await?.value;
                let text = record
                    .policy_text
                    .ok_or_else(|| RegistryError::RepositoryPolicyNotFound(repo.to_owned()))?;
                if action == "DeleteRepositoryPolicy" {
                    engine
                        .update_repository(scope, repo, |r| {
                            r.policy_text = None;
                            Ok(())
                        })
                        .await?;
                }
                Ok(encode(&json!({
                    "registryId": registry_id, "repositoryName": repo, "policyText": text
                })))
            }
            "BatchCheckLayerAvailability" => {
                engine.repository(scope, repo).await?;
                let mut layers = Vec::new();
                let mut failures = Vec::new();
                for digest in request.layer_digests.unwrap_or_default() {
                    if Digest::parse(&digest).is_none() {
                        failures.push(LayerFailure {
                            layer_digest: digest,
                            failure_code: "InvalidLayerDigest".into(),
                            failure_reason: "Invalid layer digest".into(),
                        });
                        continue;
                    }
                    match engine.blob(scope, repo, &digest).await {
                        Ok(blob) => layers.push(Layer {
                            layer_digest: digest,
                            layer_availability: "AVAILABLE".into(),
                            layer_size: Some(blob.size),
                            media_type: None,
                        }),
                        Err(RegistryError::BlobUnknown(_)) => failures.push(LayerFailure {
                            layer_digest: digest,
                            failure_code: "MissingLayerDigest".into(),
                            failure_reason: "Could not find layer".into(),
                        }),
                        Err(other) => return Err(other.into()),
                    }
                }
                Ok(encode(&json!({ "layers": layers, "failures": failures })))
            }
            "InitiateLayerUpload" => {
                let upload = engine.start_upload(scope, repo, ctx.now_ms).await?;
                Ok(encode(
                    &json!({ "uploadId": upload.id, "partSize": LAYER_PART_BYTES }),
                ))
            }
            "UploadLayerPart" => {
                let id = request.upload_id.unwrap_or_default();
                let first = request.part_first_byte.unwrap_or(0);
                let last = request.part_last_byte.unwrap_or(0);
                let data = base64::engine::general_purpose::STANDARD
                    .decode(request.layer_part_blob.unwrap_or_default())
                    .map_err(|e| {
                        EcrError::InvalidLayerPart(format!("layerPartBlob is not base64: {e}"))
                    })?;
                if data.is_empty() || last < first || last - first + 1 != data.len() as u64 {
                    return Err(EcrError::InvalidLayerPart(format!(
                        "partFirstByte {first} and partLastByte {last} do not match the {} bytes sent.",
                        data.len()
                    )));
                }
                let body =
                    futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(data))]);
                let size = engine
                    .append_upload(scope, repo, &id, Some(first), body)
                    .await?;
                Ok(encode(&json!({
                    "registryId": registry_id, "repositoryName": repo, "uploadId": id,
                    "lastByteReceived": size.saturating_sub(1)
                })))
            }
            "CompleteLayerUpload" => {
                let id = request.upload_id.unwrap_or_default();
                let digests = request.layer_digests.unwrap_or_default();
                let [digest] = digests.as_slice() else {
                    return Err(EcrError::InvalidParameter(
                        "layerDigests must name exactly one digest.".into(),
                    ));
                };
                let none: Option<futures::stream::Empty<Result<bytes::Bytes, std::io::Error>>> =
                    None;
                engine
                    .complete_upload(scope, repo, &id, digest, none, ctx.now_ms)
                    .await?;
                Ok(encode(&json!({
                    "registryId": registry_id, "repositoryName": repo, "uploadId": id, "layerDigest": digest
                })))
            }
            "PutImage" => {
                let manifest = request.image_manifest.unwrap_or_default();
                let digest = Digest::of(manifest.as_bytes()).to_string();
                if let Some(given) = &request.image_digest
                    && given != &digest
                {
                    return Err(EcrError::ImageDigestDoesNotMatch(format!(
                        "The given digest {given} does not match the manifest's digest {digest}."
                    )));
                }
                let reference = match &request.image_tag {
                    Some(tag) => {
                        validate_tag(tag).map_err(EcrError::from)?;
                        tag.clone()
                    }
                    None => digest.clone(),
                };
                if let Some(tag) = &request.image_tag
                    && let Ok(current) = engine.resolve(scope, repo, tag).await
                    && current == digest
                {
                    return Err(EcrError::ImageAlreadyExists(format!(
                        "Image with digest '{digest}' and tag '{tag}' already exists in the repository with name '{repo}' in registry with id '{registry_id}'"
                    )));
                }
                let media_type = request.image_manifest_media_type.clone().or_else(|| {
                    serde_json::from_str::<Value>(&manifest).ok().and_then(|v| {
                        v.get("mediaType")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                });
                let media_type = media_type.unwrap_or_else(|| MEDIA_DOCKER_MANIFEST.to_owned());
                let digest = engine
                    .put_manifest(
                        scope,
                        repo,
                        &reference,
                        Some(&media_type),
                        manifest.as_bytes(),
                        ctx.now_ms,
                    )
                    .await?;
                let _ = engine.apply_lifecycle(scope, repo, ctx.now_ms).await;
                Ok(encode(&json!({ "image": Image {
                    registry_id,
                    repository_name: repo.to_owned(),
                    image_id: ImageIdentifier { image_digest: Some(digest), image_tag: request.image_tag },
                    image_manifest: manifest,
                    image_manifest_media_type: media_type,
                }})))
            }
            "GetDownloadUrlForLayer" => {
                let digest = request.layer_digest.unwrap_or_default();
                engine.blob(scope, repo, &digest).await.map_err(|e| match e {
                    RegistryError::BlobUnknown(_) => EcrError::LayersNotFound(format!(
                        "The layer with digest {digest} does not exist in the repository '{repo}'."
                    )),
                    other => other.into(),
                })?;
                let secret = flotilla_api::sigv4::CredentialsProvider::secret_for(
                    &self.credentials,
                    &ctx.access_key_id,
                )
                .ok_or_else(|| EcrError::Server("the signing key is no longer known".into()))?;
                let password = token::mint(
                    &ctx.access_key_id,
                    &secret,
                    &scope.region,
                    ctx.now_ms / 1000,
                );
                Ok(encode(&json!({
                    "downloadUrl": format!("{}://{}/v2/{repo}/blobs/{digest}?{}={password}", ctx.scheme, ctx.registry_host, crate::oci::TOKEN_QUERY_PARAMETER),
                    "layerDigest": digest
                })))
            }
            other => Err(EcrError::UnsupportedOperation(format!(
                "Flotilla's registry does not implement {other}."
            ))),
        }
    }
}

fn describe_id(id: &ImageIdentifier) -> String {
    format!(
        "'{{imageDigest:'{}', imageTag:'{}'}}'",
        id.image_digest.as_deref().unwrap_or("null"),
        id.image_tag.as_deref().unwrap_or("null")
    )
}

fn matches_id(image: &ImageView, id: &ImageIdentifier) -> bool {
    let digest_ok = id
        .image_digest
        .as_ref()
        .is_none_or(|d| d == &image.record.digest);
    let tag_ok = id.image_tag.as_ref().is_none_or(|t| image.tags.contains(t));
    (id.image_digest.is_some() || id.image_tag.is_some()) && digest_ok && tag_ok
}

fn filter_tag_status(
    images: Vec<ImageView>,
    filter: Option<&wire::TagStatusFilter>,
) -> Result<Vec<ImageView>, EcrError> {
    match filter.and_then(|f| f.tag_status.as_deref()) {
        None | Some("ANY") => Ok(images),
        Some("TAGGED") => Ok(images.into_iter().filter(|i| !i.tags.is_empty()).collect()),
        Some("UNTAGGED") => Ok(images.into_iter().filter(|i| i.tags.is_empty()).collect()),
        Some(other) => Err(EcrError::InvalidParameter(format!(
            "tagStatus must be TAGGED, UNTAGGED or ANY, got '{other}'."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_resumes_after_the_token() {
        let items: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
        let (page, next) = paginate(items.clone(), |s| s.clone(), None, 2);
        assert_eq!(page, ["r0", "r1"]);
        let (page, next) = paginate(items.clone(), |s| s.clone(), next.as_deref(), 2);
        assert_eq!(page, ["r2", "r3"]);
        let (page, next) = paginate(items, |s| s.clone(), next.as_deref(), 2);
        assert_eq!(page, ["r4"]);
        assert_eq!(next, None);
    }
}
