//! AWS's error shape for awsJson 1.1: an HTTP status plus `{"__type": ..., "message": ...}`.

use flotilla_model::EcsError;

/// An error as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The exception name, e.g. `ClusterNotFoundException`.
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
        }
    }

    pub fn serialization(message: String) -> Self {
        Self::new("SerializationException", 400, message)
    }

    pub fn unknown_operation(target: &str) -> Self {
        Self::new(
            "UnknownOperationException",
            400,
            format!("Unknown operation: '{target}'."),
        )
    }

    pub fn unsupported_operation(action: &str) -> Self {
        Self::new(
            "UnsupportedFeatureException",
            400,
            format!("Flotilla does not implement the {action} action yet."),
        )
    }

    pub fn missing_target() -> Self {
        Self::new(
            "UnknownOperationException",
            400,
            "Missing or malformed X-Amz-Target header.",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            "RequestEntityTooLargeException",
            413,
            format!("Request body is larger than {limit} bytes."),
        )
    }

    /// The JSON body AWS SDKs parse.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "__type": self.code, "message": self.message }))
            .unwrap_or_default()
    }
}

impl From<EcsError> for ApiError {
    fn from(error: EcsError) -> Self {
        let (code, status) = match &error {
            EcsError::ClusterNotFound => ("ClusterNotFoundException", 400),
            EcsError::ServiceNotFound => ("ServiceNotFoundException", 400),
            EcsError::ServiceNotActive => ("ServiceNotActiveException", 400),
            EcsError::InvalidParameter(_) => ("InvalidParameterException", 400),
            EcsError::Client(_) => ("ClientException", 400),
            EcsError::ClusterContainsContainerInstances => {
                ("ClusterContainsContainerInstancesException", 400)
            }
            EcsError::ClusterContainsServices => ("ClusterContainsServicesException", 400),
            EcsError::ClusterContainsTasks => ("ClusterContainsTasksException", 400),
            EcsError::ResourceNotFound(_) => ("ResourceNotFoundException", 400),
            EcsError::ResourceInUse(_) => ("ResourceInUseException", 400),
            EcsError::TargetNotFound(_) => ("TargetNotFoundException", 400),
            EcsError::AttributeLimitExceeded(_) => ("AttributeLimitExceededException", 400),
            EcsError::LimitExceeded(_) => ("LimitExceededException", 400),
            EcsError::Conflict(_) => ("ConflictException", 400),
            EcsError::UnsupportedFeature(_) => ("UnsupportedFeatureException", 400),
            EcsError::Server(_) => ("ServerException", 500),
        };
        Self::new(code, status, error.to_string())
    }
}

impl From<crate::sigv4::AuthError> for ApiError {
    fn from(error: crate::sigv4::AuthError) -> Self {
        Self::new(error.code(), error.status(), error.to_string())
    }
}
