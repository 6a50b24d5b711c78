//! The Fargate launch type through the ECS API, with fake agents: hidden Fargate capacity,
//! awsvpc attachments, ECS's validation, capacity providers with base and weight, and the
//! reclaiming of FARGATE_SPOT capacity.

mod common;

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, Compatibility,
    ContainerDefinition, NetworkConfiguration, NetworkMode, PlacementConstraint,
    PlacementConstraintType, PortMapping, TaskOverride,
};
use common::{TestServer, code, message, start};
use flotilla_model::task::{TaskNetwork, TaskStatus};
use flotilla_testkit::{FakeAgent, FakeHost, FakeMode, test_identity};

fn network(subnet: &str) -> NetworkConfiguration {
    NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets(subnet)
                .security_groups("sg-0123")
                .assign_public_ip(AssignPublicIp::Disabled)
                .build()
                .unwrap(),
        )
        .build()
}

async fn register_fargate(c: &aws_sdk_ecs::Client, family: &str, cpu: &str, memory: &str) {
    c.register_task_definition()
        .family(family)
        .requires_compatibilities(Compatibility::Fargate)
        .network_mode(NetworkMode::Awsvpc)
        .cpu(cpu)
        .memory(memory)
        .container_definitions(
            ContainerDefinition::builder()
                .name("web")
                .image("busybox")
                .port_mappings(PortMapping::builder().container_port(80).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
}

fn fargate_host(cluster: &str) -> FakeHost {
    let mut host = FakeHost::new(cluster, 4096, 8192);
    host.fargate_capacity = true;
    host
}

/// Cluster "apps" with one EC2 host and Fargate capacity (agents in `mode`), and the
/// Fargate task definition "web" (0.25 vCPU, 512 MiB).
async fn apps_with_fargate(mode: FakeMode) -> (TestServer, FakeAgent, FakeAgent) {
    let t = start().await;
    t.cluster("apps").await;
    let ec2 = t.agent(FakeHost::new("apps", 2048, 4096), mode).await;
    let fargate = t.agent(fargate_host("apps"), mode).await;
    register_fargate(&t.client, "web", "256", "512").await;
    (t, ec2, fargate)
}

#[tokio::test]
async fn fargate_tasks_run_on_hidden_capacity_and_show_their_network_interface() {
    let (t, ec2, fargate) = apps_with_fargate(FakeMode::Manual).await;
    let c = &t.client;

    // The user sees only their own instance.
    let listed = c
        .list_container_instances()
        .cluster("apps")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.container_instance_arns(),
        std::slice::from_ref(&ec2.container_instance_arn)
    );
    let described = c
        .describe_container_instances()
        .cluster("apps")
        .container_instances(&fargate.container_instance_arn)
        .send()
        .await
        .unwrap();
    assert!(described.container_instances().is_empty());
    assert_eq!(described.failures()[0].reason(), Some("MISSING"));

    // awsvpc needs a network configuration.
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    assert_eq!(
        message(&error),
        "Network Configuration must be provided when networkMode 'awsvpc' is specified."
    );

    let run = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .network_configuration(network("subnet-0abc"))
        .count(2)
        .send()
        .await
        .unwrap();
    assert!(run.failures().is_empty(), "{:?}", run.failures());
    let tasks = run.tasks();
    assert_eq!(tasks.len(), 2);
    for task in tasks {
        assert_eq!(
            task.launch_type(),
            Some(&aws_sdk_ecs::types::LaunchType::Fargate)
        );
        assert_eq!(task.container_instance_arn(), None);
        let attachment = &task.attachments()[0];
        assert_eq!(attachment.r#type(), Some("ElasticNetworkInterface"));
        assert_eq!(attachment.status(), Some("PRECREATED"));
        assert_eq!(attachment.details()[0].name(), Some("subnetId"));
        assert_eq!(attachment.details()[0].value(), Some("subnet-0abc"));
    }
    let task_arn = tasks[0].task_arn().unwrap().to_owned();
    common::eventually("the Fargate host is handed the tasks", || async {
        fargate.seen_tasks().len() == 2
    })
    .await;
    assert!(
        ec2.seen_tasks().is_empty(),
        "EC2 hosts never get Fargate tasks"
    );

    fargate
        .report_network(
            &task_arn,
            TaskStatus::Running,
            TaskNetwork {
                private_ipv4_address: "172.18.0.5".into(),
                mac_address: "02:42:ac:12:00:05".into(),
                subnet_cidr: "172.18.0.0/16".into(),
                gateway_ipv4_address: "172.18.0.1".into(),
            },
        )
        .await
        .unwrap();
    let described = c
        .describe_tasks()
        .cluster("apps")
        .tasks(&task_arn)
        .send()
        .await
        .unwrap();
    let task = &described.tasks()[0];
    assert_eq!(task.last_status(), Some("RUNNING"));
    let attachment = &task.attachments()[0];
    assert_eq!(attachment.status(), Some("ATTACHED"));
    let detail = |name: &str| {
        attachment
            .details()
            .iter()
            .find(|d| d.name() == Some(name))
            .and_then(|d| d.value())
            .map(str::to_owned)
    };
    assert_eq!(detail("subnetId").as_deref(), Some("subnet-0abc"));
    assert_eq!(detail("privateIPv4Address").as_deref(), Some("172.18.0.5"));
    assert_eq!(detail("macAddress").as_deref(), Some("02:42:ac:12:00:05"));
    assert_eq!(
        detail("privateDnsName").as_deref(),
        Some("ip-172-18-0-5.ec2.internal")
    );
    assert!(detail("networkInterfaceId").unwrap().starts_with("eni-"));
    let interface = &task.containers()[0].network_interfaces()[0];
    assert_eq!(interface.private_ipv4_address(), Some("172.18.0.5"));
    assert_eq!(interface.attachment_id(), attachment.id());

    let cluster = c.describe_clusters().clusters("apps").send().await.unwrap();
    let cluster = &cluster.clusters()[0];
    assert_eq!(cluster.registered_container_instances_count(), 1);
    assert_eq!(cluster.running_tasks_count(), 1);

    let fargate_only = c
        .list_tasks()
        .cluster("apps")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .send()
        .await
        .unwrap();
    assert_eq!(fargate_only.task_arns().len(), 2);

    fargate
        .report(&task_arn, TaskStatus::Stopped)
        .await
        .unwrap();
    let described = c
        .describe_tasks()
        .cluster("apps")
        .tasks(&task_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.tasks()[0].attachments()[0].status(),
        Some("DELETED")
    );
}

#[tokio::test]
async fn fargate_refusals_follow_ecs() {
    let t = start().await;
    let c = &t.client;
    t.cluster("apps").await;
    let _ec2 = t
        .agent(FakeHost::new("apps", 2048, 4096), FakeMode::Manual)
        .await;

    // A size outside the Fargate table.
    let error = c
        .register_task_definition()
        .family("big")
        .requires_compatibilities(Compatibility::Fargate)
        .network_mode(NetworkMode::Awsvpc)
        .cpu("256")
        .memory("4096")
        .container_definitions(common::container("web", 128))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException");
    assert!(
        message(&error)
            .contains("No Fargate configuration exists for given values: 256 CPU, 4096 memory"),
        "{}",
        message(&error)
    );
    // A privileged container, a host port other than the container port.
    for (container, expected) in [
        (
            ContainerDefinition::builder()
                .name("p")
                .image("busybox")
                .privileged(true)
                .build(),
            "privileged",
        ),
        (
            ContainerDefinition::builder()
                .name("p")
                .image("busybox")
                .port_mappings(
                    PortMapping::builder()
                        .container_port(80)
                        .host_port(8080)
                        .build(),
                )
                .build(),
            "hostPort",
        ),
    ] {
        let error = c
            .register_task_definition()
            .family("bad")
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu("256")
            .memory("512")
            .container_definitions(container)
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&error), "ClientException");
        assert!(message(&error).contains(expected), "{}", message(&error));
    }

    // An EC2 (bridge) definition cannot run on Fargate.
    c.register_task_definition()
        .family("bridge")
        .container_definitions(common::container("web", 128))
        .send()
        .await
        .unwrap();
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("bridge")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    assert!(
        message(&error).starts_with("Task definition does not support launch_type FARGATE"),
        "{}",
        message(&error)
    );
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("bridge")
        .network_configuration(network("subnet-1"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        message(&error),
        "Network Configuration is not valid for the given networkMode of this task definition."
    );

    register_fargate(c, "web", "256", "512").await;
    // An overridden size outside the table.
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .network_configuration(network("subnet-1"))
        .overrides(TaskOverride::builder().cpu("256").memory("8192").build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    // Placement constraints do not apply to Fargate.
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .network_configuration(network("subnet-1"))
        .placement_constraints(
            PlacementConstraint::builder()
                .r#type(PlacementConstraintType::DistinctInstance)
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    // No Fargate capacity in the cluster: ECS's capacity failure, nothing placed.
    let run = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .network_configuration(network("subnet-1"))
        .send()
        .await
        .unwrap();
    assert!(run.tasks().is_empty());
    assert!(
        run.failures()[0]
            .reason()
            .unwrap()
            .starts_with("Capacity is unavailable at this time"),
        "{:?}",
        run.failures()
    );
    // An awsvpc task on EC2 cannot have a public address.
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Ec2)
        .network_configuration(
            NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder()
                        .subnets("subnet-1")
                        .assign_public_ip(AssignPublicIp::Enabled)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        message(&error),
        "Assign public IP is not supported for this launch type."
    );
    // awsvpc on EC2 works, on the user's instances.
    let run = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .launch_type(aws_sdk_ecs::types::LaunchType::Ec2)
        .network_configuration(network("subnet-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(run.tasks().len(), 1, "{:?}", run.failures());
    assert_eq!(run.tasks()[0].attachments().len(), 1);
}

#[tokio::test]
async fn capacity_provider_strategies_split_tasks_and_spot_capacity_can_be_reclaimed() {
    let t = start().await;
    let c = &t.client;
    t.cluster("apps").await;
    let _fargate = t.agent(fargate_host("apps"), FakeMode::AutoRun).await;
    register_fargate(c, "web", "256", "512").await;
    let item = |name: &str, base: i32, weight: i32| {
        CapacityProviderStrategyItem::builder()
            .capacity_provider(name)
            .base(base)
            .weight(weight)
            .build()
            .unwrap()
    };
    // A strategy naming providers the cluster does not have is refused.
    let error = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .capacity_provider_strategy(item("FARGATE", 0, 1))
        .network_configuration(network("subnet-1"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    c.put_cluster_capacity_providers()
        .cluster("apps")
        .capacity_providers("FARGATE")
        .capacity_providers("FARGATE_SPOT")
        .default_capacity_provider_strategy(item("FARGATE", 1, 1))
        .default_capacity_provider_strategy(item("FARGATE_SPOT", 0, 3))
        .send()
        .await
        .unwrap();
    // The cluster's default strategy: base 1 on FARGATE, then 1:3.
    let run = c
        .run_task()
        .cluster("apps")
        .task_definition("web")
        .network_configuration(network("subnet-1"))
        .count(9)
        .send()
        .await
        .unwrap();
    assert!(run.failures().is_empty(), "{:?}", run.failures());
    let on = |name: &str| {
        run.tasks()
            .iter()
            .filter(|t| t.capacity_provider_name() == Some(name))
            .count()
    };
    assert_eq!((on("FARGATE"), on("FARGATE_SPOT")), (3, 6));
    assert!(
        run.tasks()
            .iter()
            .all(|t| t.launch_type() == Some(&aws_sdk_ecs::types::LaunchType::Fargate))
    );

    // The operator reclaims two spot tasks: they stop with SpotInterruption.
    let spot: Vec<String> = run
        .tasks()
        .iter()
        .filter(|t| t.capacity_provider_name() == Some("FARGATE_SPOT"))
        .map(|t| t.task_arn().unwrap().to_owned())
        .collect();
    common::eventually("the spot tasks run", || async {
        let described = c
            .describe_tasks()
            .cluster("apps")
            .set_tasks(Some(spot.clone()))
            .send()
            .await
            .unwrap();
        described
            .tasks()
            .iter()
            .all(|t| t.last_status() == Some("RUNNING"))
    })
    .await;
    let operator = flotilla_agent::ServerClient::new(&t.endpoint, test_identity());
    let answer: flotilla_protocol::ReclaimSpotCapacityResponse = operator
        .call(
            "FlotillaV1.ReclaimSpotCapacity",
            &flotilla_protocol::ReclaimSpotCapacityRequest {
                cluster: Some("apps".into()),
                count: Some(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(answer.task_arns.len(), 2);
    let described = c
        .describe_tasks()
        .cluster("apps")
        .set_tasks(Some(answer.task_arns.clone()))
        .send()
        .await
        .unwrap();
    for task in described.tasks() {
        assert_eq!(task.capacity_provider_name(), Some("FARGATE_SPOT"));
        assert_eq!(task.desired_status(), Some("STOPPED"));
        assert_eq!(
            task.stop_code(),
            Some(&aws_sdk_ecs::types::TaskStopCode::SpotInterruption)
        );
        assert_eq!(
            task.stopped_reason(),
            Some("Your Spot Task was interrupted.")
        );
    }
}

#[tokio::test]
async fn capacity_providers_are_created_described_updated_and_deleted() {
    let t = start().await;
    let c = &t.client;
    let group = |arn: &str| {
        aws_sdk_ecs::types::AutoScalingGroupProvider::builder()
            .auto_scaling_group_arn(arn)
            .managed_termination_protection(
                aws_sdk_ecs::types::ManagedTerminationProtection::Disabled,
            )
            .build()
            .unwrap()
    };
    let created = c
        .create_capacity_provider()
        .name("workers")
        .auto_scaling_group_provider(group("arn:aws:autoscaling:us-east-1:000000000000:autoScalingGroup:1:autoScalingGroupName/workers"))
        .send()
        .await
        .unwrap();
    let provider = created.capacity_provider().unwrap();
    assert_eq!(
        provider.status(),
        Some(&aws_sdk_ecs::types::CapacityProviderStatus::Active)
    );
    assert_eq!(
        provider.capacity_provider_arn(),
        Some("arn:aws:ecs:us-east-1:000000000000:capacity-provider/workers")
    );
    let error = c
        .create_capacity_provider()
        .name("workers")
        .auto_scaling_group_provider(group("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException");
    let error = c
        .create_capacity_provider()
        .name("fargate-mine")
        .auto_scaling_group_provider(group("x"))
        .send()
        .await
        .unwrap_err();
    assert!(
        message(&error).contains("cannot start with"),
        "{}",
        message(&error)
    );

    let all = c.describe_capacity_providers().send().await.unwrap();
    let names: Vec<&str> = all
        .capacity_providers()
        .iter()
        .filter_map(|p| p.name())
        .collect();
    assert_eq!(names, ["FARGATE", "FARGATE_SPOT", "workers"]);

    let updated = c
        .update_capacity_provider()
        .name("workers")
        .auto_scaling_group_provider(
            aws_sdk_ecs::types::AutoScalingGroupProviderUpdate::builder()
                .managed_termination_protection(
                    aws_sdk_ecs::types::ManagedTerminationProtection::Enabled,
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let provider = updated.capacity_provider().unwrap();
    assert_eq!(
        provider
            .auto_scaling_group_provider()
            .unwrap()
            .managed_termination_protection(),
        Some(&aws_sdk_ecs::types::ManagedTerminationProtection::Enabled)
    );

    // In use by a cluster: it cannot go; once released it can.
    t.cluster("apps").await;
    c.put_cluster_capacity_providers()
        .cluster("apps")
        .capacity_providers("workers")
        .set_default_capacity_provider_strategy(Some(Vec::new()))
        .send()
        .await
        .unwrap();
    let error = c
        .delete_capacity_provider()
        .capacity_provider("workers")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceInUseException");
    c.put_cluster_capacity_providers()
        .cluster("apps")
        .set_capacity_providers(Some(Vec::new()))
        .set_default_capacity_provider_strategy(Some(Vec::new()))
        .send()
        .await
        .unwrap();
    let deleted = c
        .delete_capacity_provider()
        .capacity_provider("workers")
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleted.capacity_provider().unwrap().status(),
        Some(&aws_sdk_ecs::types::CapacityProviderStatus::Inactive)
    );
    let error = c
        .put_cluster_capacity_providers()
        .cluster("apps")
        .capacity_providers("workers")
        .set_default_capacity_provider_strategy(Some(Vec::new()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
}

/// A FARGATE service keeps its tasks on Fargate capacity, in its awsvpc network; ECS's
/// refusals for Fargate services hold.
#[tokio::test]
async fn a_fargate_service_runs_its_tasks_on_fargate_capacity() {
    use aws_sdk_ecs::types::{LaunchType, SchedulingStrategy};
    let (t, ec2, _fargate) = apps_with_fargate(FakeMode::AutoRun).await;
    let c = &t.client;

    // Refusals: no network configuration, DAEMON, placement strategies.
    let error = c
        .create_service()
        .cluster("apps")
        .service_name("bad")
        .task_definition("web")
        .launch_type(LaunchType::Fargate)
        .desired_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        message(&error),
        "Network Configuration must be provided when networkMode 'awsvpc' is specified."
    );
    let error = c
        .create_service()
        .cluster("apps")
        .service_name("bad")
        .task_definition("web")
        .launch_type(LaunchType::Fargate)
        .scheduling_strategy(SchedulingStrategy::Daemon)
        .network_configuration(network("subnet-0abc"))
        .send()
        .await
        .unwrap_err();
    assert!(message(&error).contains("DAEMON scheduling strategy is not supported"));
    assert!(
        c.list_services()
            .cluster("apps")
            .send()
            .await
            .unwrap()
            .service_arns()
            .is_empty(),
        "a refused service is not created"
    );

    let created = c
        .create_service()
        .cluster("apps")
        .service_name("web")
        .task_definition("web")
        .launch_type(LaunchType::Fargate)
        .desired_count(3)
        .network_configuration(network("subnet-0abc"))
        .send()
        .await
        .unwrap();
    let service = created.service().unwrap();
    assert_eq!(service.launch_type(), Some(&LaunchType::Fargate));
    assert_eq!(service.platform_version(), Some("LATEST"));
    assert!(service.placement_strategy().is_empty());
    assert_eq!(
        service
            .network_configuration()
            .and_then(|n| n.awsvpc_configuration())
            .map(|a| a.subnets().to_vec()),
        Some(vec!["subnet-0abc".to_owned()])
    );
    let mut running = 0;
    for _ in 0..100 {
        let described = c
            .describe_services()
            .cluster("apps")
            .services("web")
            .send()
            .await
            .unwrap();
        running = described.services()[0].running_count();
        if running == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(running, 3);
    let arns = c
        .list_tasks()
        .cluster("apps")
        .service_name("web")
        .send()
        .await
        .unwrap()
        .task_arns()
        .to_vec();
    let tasks = c
        .describe_tasks()
        .cluster("apps")
        .set_tasks(Some(arns))
        .send()
        .await
        .unwrap();
    for task in tasks.tasks() {
        assert_eq!(task.launch_type(), Some(&LaunchType::Fargate));
        assert!(task.container_instance_arn().is_none());
        let attachment = &task.attachments()[0];
        assert_eq!(attachment.r#type(), Some("ElasticNetworkInterface"));
        assert!(
            attachment
                .details()
                .iter()
                .any(|d| d.name() == Some("subnetId") && d.value() == Some("subnet-0abc"))
        );
    }
    // Nothing landed on the user's instance.
    let listed = c
        .list_tasks()
        .cluster("apps")
        .container_instance(&ec2.container_instance_arn)
        .send()
        .await
        .unwrap();
    assert!(listed.task_arns().is_empty());
}
