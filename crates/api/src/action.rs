//! The closed set of ECS actions Flotilla serves, parsed from `X-Amz-Target` and the body.
//!
//! The engine never sees HTTP or JSON: it receives an [`Action`].

use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::requests::*;

/// `X-Amz-Target` prefix of the ECS API.
pub const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113";

macro_rules! actions {
    ($($name:ident($request:ty)),* $(,)?) => {
        /// One parsed ECS request.
        #[derive(Debug)]
        pub enum Action { $($name($request)),* }

        impl Action {
            /// The action's ECS name (`RunTask`), used in metrics and logs.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$name(_) => stringify!($name)),* }
            }
        }

        fn parse_known(name: &str, body: &[u8]) -> Option<Result<Action, ApiError>> {
            match name {
                $(stringify!($name) => Some(decode::<$request>(body).map(Action::$name)),)*
                _ => None,
            }
        }

        /// Every action name Flotilla serves.
        pub const ACTION_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

actions! {
    CreateCluster(CreateClusterRequest),
    DescribeClusters(DescribeClustersRequest),
    ListClusters(ListRequest),
    DeleteCluster(ClusterRequest),
    UpdateCluster(UpdateClusterRequest),
    UpdateClusterSettings(UpdateClusterSettingsRequest),
    PutClusterCapacityProviders(PutClusterCapacityProvidersRequest),
    DescribeCapacityProviders(DescribeCapacityProvidersRequest),
    CreateCapacityProvider(CreateCapacityProviderRequest),
    UpdateCapacityProvider(UpdateCapacityProviderRequest),
    DeleteCapacityProvider(DeleteCapacityProviderRequest),
    RegisterTaskDefinition(RegisterTaskDefinitionRequest),
    DescribeTaskDefinition(DescribeTaskDefinitionRequest),
    ListTaskDefinitions(ListTaskDefinitionsRequest),
    ListTaskDefinitionFamilies(ListTaskDefinitionFamiliesRequest),
    DeregisterTaskDefinition(DeregisterTaskDefinitionRequest),
    DeleteTaskDefinitions(DeleteTaskDefinitionsRequest),
    RegisterContainerInstance(RegisterContainerInstanceRequest),
    DescribeContainerInstances(DescribeContainerInstancesRequest),
    ListContainerInstances(ListContainerInstancesRequest),
    UpdateContainerInstancesState(UpdateContainerInstancesStateRequest),
    DeregisterContainerInstance(DeregisterContainerInstanceRequest),
    RunTask(RunTaskRequest),
    StartTask(StartTaskRequest),
    StopTask(StopTaskRequest),
    DescribeTasks(DescribeTasksRequest),
    ListTasks(ListTasksRequest),
    PutAttributes(AttributesRequest),
    DeleteAttributes(AttributesRequest),
    ListAttributes(ListAttributesRequest),
    TagResource(TagResourceRequest),
    UntagResource(UntagResourceRequest),
    ListTagsForResource(ListTagsForResourceRequest),
    ListAccountSettings(ListAccountSettingsRequest),
    PutAccountSetting(PutAccountSettingRequest),
    PutAccountSettingDefault(PutAccountSettingRequest),
    DeleteAccountSetting(DeleteAccountSettingRequest),
    CreateService(CreateServiceRequest),
    UpdateService(UpdateServiceRequest),
    DeleteService(DeleteServiceRequest),
    DescribeServices(DescribeServicesRequest),
    ListServices(ListServicesRequest),
}

/// ECS actions that exist in botocore's model but that this build does not serve yet.
/// They get UnsupportedFeatureException with their name rather than "unknown operation".
const NOT_YET_SERVED: &[&str] = &[
    "ListServicesByNamespace",
    "CreateTaskSet",
    "DescribeTaskSets",
    "UpdateTaskSet",
    "DeleteTaskSet",
    "UpdateServicePrimaryTaskSet",
    "ExecuteCommand",
    "GetTaskProtection",
    "UpdateTaskProtection",
    "ListServiceDeployments",
    "DescribeServiceDeployments",
    "DescribeServiceRevisions",
    "StopServiceDeployment",
    "ContinueServiceDeployment",
    "UpdateContainerAgent",
    "DiscoverPollEndpoint",
    "SubmitTaskStateChange",
    "SubmitContainerStateChange",
    "SubmitAttachmentStateChanges",
    "CreateDaemon",
    "UpdateDaemon",
    "DeleteDaemon",
    "DescribeDaemon",
    "ListDaemons",
    "DescribeDaemonDeployments",
    "ListDaemonDeployments",
    "DescribeDaemonRevisions",
    "RegisterDaemonTaskDefinition",
    "DescribeDaemonTaskDefinition",
    "ListDaemonTaskDefinitions",
    "DeleteDaemonTaskDefinition",
    "CreateExpressGatewayService",
    "UpdateExpressGatewayService",
    "DescribeExpressGatewayService",
    "DeleteExpressGatewayService",
    "CreateGateway",
    "UpdateGateway",
    "DeleteGateway",
    "DescribeGateway",
    "DescribeGatewayResources",
    "DescribeGatewayRoute",
    "ListGateways",
    "ListGatewayRoutes",
    "AssociateGatewayWithCluster",
    "DisassociateGatewayFromCluster",
    "ListGatewayClusterAssociations",
];

/// Parses an ECS action name (the part after the target prefix) and its JSON body.
pub fn parse(action_name: &str, body: &[u8]) -> Result<Action, ApiError> {
    if let Some(parsed) = parse_known(action_name, body) {
        return parsed;
    }
    if NOT_YET_SERVED.contains(&action_name) {
        return Err(ApiError::unsupported_operation(action_name));
    }
    Err(ApiError::unknown_operation(&format!(
        "{ECS_TARGET_PREFIX}.{action_name}"
    )))
}

/// Decodes a JSON object body; an empty body counts as `{}`, as AWS treats it.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::serialization(format!("Malformed JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::serialization(
            "The request body must be a JSON object.".to_owned(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::serialization(format!("Invalid value for member '{path}': {}", e.inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_actions_and_refuses_others() {
        assert_eq!(parse("ListClusters", b"").unwrap().name(), "ListClusters");
        assert_eq!(
            parse("CreateTaskSet", b"{}").unwrap_err().code,
            "UnsupportedFeatureException"
        );
        assert_eq!(
            parse("Frobnicate", b"{}").unwrap_err().code,
            "UnknownOperationException"
        );
    }

    #[test]
    fn malformed_bodies_are_serialization_errors() {
        let error = parse("ListClusters", b"{not json").unwrap_err();
        assert_eq!(error.code, "SerializationException");
        let error = parse("RunTask", br#"{"count": "three"}"#).unwrap_err();
        assert_eq!(error.code, "SerializationException");
        assert!(error.message.contains("count"), "{}", error.message);
        assert_eq!(
            parse("ListClusters", b"[1]").unwrap_err().code,
            "SerializationException"
        );
    }

    #[test]
    fn unknown_members_are_ignored() {
        let action = parse(
            "CreateCluster",
            br#"{"clusterName":"a","fromTheFuture":{"x":1}}"#,
        )
        .unwrap();
        match action {
            Action::CreateCluster(request) => {
                assert_eq!(request.cluster_name.as_deref(), Some("a"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
