//! The failures an ECS request can end in, in the domain's words. The API layer maps each
//! variant to AWS's exception name and HTTP status; the message is what the user reads.

/// Why a request was refused or failed. Messages follow ECS's wording where ECS has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EcsError {
    /// The named cluster does not exist (or is INACTIVE where an ACTIVE one is needed).
    #[error("Cluster not found.")]
    ClusterNotFound,
    /// The named service does not exist.
    #[error("Service not found.")]
    ServiceNotFound,
    /// The service is DRAINING or INACTIVE where an ACTIVE one is needed.
    #[error("Service was not ACTIVE.")]
    ServiceNotActive,
    /// A parameter is missing, malformed or out of range; the text names it.
    #[error("{0}")]
    InvalidParameter(String),
    /// The request is well-formed but not allowed in the current state, or its content is invalid.
    #[error("{0}")]
    Client(String),
    #[error("The Cluster cannot be deleted while Container Instances are active or draining.")]
    ClusterContainsContainerInstances,
    #[error("The Cluster cannot be deleted while Services are active.")]
    ClusterContainsServices,
    #[error("The Cluster cannot be deleted while Tasks are active.")]
    ClusterContainsTasks,
    /// A referenced resource (by ARN) does not exist.
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    /// PutAttributes/DeleteAttributes named a target that does not exist.
    #[error("{0}")]
    TargetNotFound(String),
    #[error("{0}")]
    AttributeLimitExceeded(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// Same idempotency token, different request.
    #[error("{0}")]
    Conflict(String),
    /// An ECS feature Flotilla does not implement (yet); the text says which.
    #[error("{0}")]
    UnsupportedFeature(String),
    /// Something failed inside Flotilla; retrying may help.
    #[error("{0}")]
    Server(String),
}

impl EcsError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidParameter(message.into())
    }

    pub fn client(message: impl Into<String>) -> Self {
        Self::Client(message.into())
    }
}

impl From<crate::validate::ValidationError> for EcsError {
    fn from(error: crate::validate::ValidationError) -> Self {
        match error.kind {
            crate::validate::ErrorKind::ClientException => Self::Client(error.message),
            crate::validate::ErrorKind::InvalidParameterException => {
                Self::InvalidParameter(error.message)
            }
        }
    }
}
