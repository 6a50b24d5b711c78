//! Services through the AWS SDK for Rust against an in-process server, with fake agents
//! standing in for hosts: the API's shapes and errors, the ServicesStable waiter, task
//! replacement, rolling updates, the circuit breaker, DAEMON services and deletion.

mod common;

use std::time::Duration;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::client::Waiters;
use aws_sdk_ecs::types::{
    ContainerInstanceStatus, DeploymentCircuitBreaker, DeploymentConfiguration, DesiredStatus,
    PlacementStrategy, PlacementStrategyType, SchedulingStrategy, Service,
};
use common::{code, container, eventually, message, start};
use flotilla_model::TaskStatus;
use flotilla_testkit::{FakeAgent, FakeHost, FakeMode};

async fn register(c: &Client, family: &str, memory: i32) -> String {
    c.register_task_definition()
        .family(family)
        .container_definitions(container("app", memory))
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap()
        .task_definition_arn
        .unwrap()
}

async fn describe(c: &Client, cluster: &str, service: &str) -> Service {
    c.describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .unwrap()
        .services
        .unwrap()
        .remove(0)
}

async fn task_arns(c: &Client, cluster: &str, service: &str) -> Vec<String> {
    c.list_tasks()
        .cluster(cluster)
        .service_name(service)
        .send()
        .await
        .unwrap()
        .task_arns
        .unwrap_or_default()
}

/// Waits until the service looks stable, then asks the SDK's ServicesStable waiter, which
/// polls every 15 s: checked first, it answers at its first poll.
/// Waits for the ServicesStable waiter and for the PRIMARY to be COMPLETED (its tasks past
/// the healthy-after window), which the waiter does not check: only a COMPLETED deployment
/// can be rolled back to.
async fn wait_stable(c: &Client, cluster: &str, service: &str) {
    eventually("the service looks stable", || async {
        let s = describe(c, cluster, service).await;
        s.deployments().len() == 1
            && s.running_count() == s.desired_count()
            && s.deployments()[0].rollout_state()
                == Some(&aws_sdk_ecs::types::DeploymentRolloutState::Completed)
    })
    .await;
    c.wait_until_services_stable()
        .cluster(cluster)
        .services(service)
        .wait(Duration::from_secs(60))
        .await
        .expect("the service becomes stable");
}

#[tokio::test]
async fn a_replica_service_becomes_stable_and_is_described_as_ecs_does() {
    let t = start().await;
    let c = &t.client;
    t.cluster("web").await;
    let _a = t
        .agent(FakeHost::new("web", 2048, 4096), FakeMode::AutoRun)
        .await;
    let _b = t
        .agent(FakeHost::new("web", 2048, 4096), FakeMode::AutoRun)
        .await;
    let td = register(c, "site", 128).await;
    let created = c
        .create_service()
        .cluster("web")
        .service_name("site")
        .task_definition("site")
        .desired_count(3)
        .tags(
            aws_sdk_ecs::types::Tag::builder()
                .key("team")
                .value("web")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .service
        .unwrap();
    assert_eq!(created.status(), Some("ACTIVE"));
    assert_eq!(created.desired_count(), 3);
    assert_eq!(created.task_definition(), Some(td.as_str()));
    assert_eq!(
        created.scheduling_strategy(),
        Some(&SchedulingStrategy::Replica)
    );
    let config = created.deployment_configuration().unwrap();
    assert_eq!(config.maximum_percent(), Some(200));
    assert_eq!(config.minimum_healthy_percent(), Some(100));
    assert_eq!(created.deployments().len(), 1);
    assert_eq!(created.deployments()[0].status(), Some("PRIMARY"));
    assert!(
        created
            .service_arn()
            .unwrap()
            .ends_with(":service/web/site")
    );

    wait_stable(c, "web", "site").await;
    let service = describe(c, "web", "site").await;
    assert_eq!(service.running_count(), 3);
    assert_eq!(service.pending_count(), 0);
    assert_eq!(service.deployments().len(), 1);
    let primary = &service.deployments()[0];
    assert_eq!(primary.running_count(), 3);
    assert_eq!(
        primary.rollout_state(),
        Some(&aws_sdk_ecs::types::DeploymentRolloutState::Completed)
    );
    let messages: Vec<&str> = service
        .events()
        .iter()
        .filter_map(|e| e.message())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("(service site) has started 3 tasks:")),
        "{messages:?}"
    );
    eventually("the steady-state event", || async {
        describe(c, "web", "site")
            .await
            .events()
            .iter()
            .any(|e| e.message() == Some("(service site) has reached a steady state."))
    })
    .await;

    // The tasks carry the service's group and the deployment as startedBy, spread over hosts.
    let arns = task_arns(c, "web", "site").await;
    assert_eq!(arns.len(), 3);
    let tasks = c
        .describe_tasks()
        .cluster("web")
        .set_tasks(Some(arns))
        .send()
        .await
        .unwrap()
        .tasks
        .unwrap();
    for task in &tasks {
        assert_eq!(task.group(), Some("service:site"));
        assert_eq!(task.started_by(), primary.id());
    }
    let hosts: std::collections::BTreeSet<_> = tasks
        .iter()
        .filter_map(|t| t.container_instance_arn())
        .collect();
    assert_eq!(hosts.len(), 2, "spread over both hosts");

    // Listings, counts and the cluster's guard.
    let listed = c.list_services().cluster("web").send().await.unwrap();
    assert_eq!(listed.service_arns(), [service.service_arn().unwrap()]);
    let cluster = c
        .describe_clusters()
        .clusters("web")
        .send()
        .await
        .unwrap()
        .clusters
        .unwrap()
        .remove(0);
    assert_eq!(cluster.active_services_count(), 1);
    let error = c.delete_cluster().cluster("web").send().await.unwrap_err();
    assert_eq!(code(&error), "ClusterContainsServicesException");
    let tagged = c
        .describe_services()
        .cluster("web")
        .services("site")
        .include(aws_sdk_ecs::types::ServiceField::Tags)
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.services()[0].tags().len(), 1);
    let service_arn = service.service_arn().unwrap();
    c.tag_resource()
        .resource_arn(service_arn)
        .tags(
            aws_sdk_ecs::types::Tag::builder()
                .key("tier")
                .value("front")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let tags = c
        .list_tags_for_resource()
        .resource_arn(service_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags().len(), 2);
    let missing = c
        .describe_services()
        .cluster("web")
        .services("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.failures()[0].reason(), Some("MISSING"));
}

#[tokio::test]
async fn bad_service_requests_are_refused_and_change_nothing() {
    let t = start().await;
    let c = &t.client;
    t.cluster("v").await;
    register(c, "app", 64).await;
    let cases: Vec<(
        aws_sdk_ecs::operation::create_service::builders::CreateServiceFluentBuilder,
        &str,
        &str,
    )> = vec![
        (
            c.create_service()
                .cluster("v")
                .service_name("a")
                .task_definition("app"),
            "InvalidParameterException",
            "desiredCount is required",
        ),
        (
            c.create_service()
                .cluster("v")
                .service_name("bad name!")
                .task_definition("app")
                .desired_count(1),
            "InvalidParameterException",
            "serviceName",
        ),
        (
            c.create_service()
                .cluster("v")
                .service_name("a")
                .task_definition("app")
                .desired_count(1)
                .deployment_configuration(
                    DeploymentConfiguration::builder()
                        .maximum_percent(50)
                        .build(),
                ),
            "InvalidParameterException",
            "maximumPercent",
        ),
        (
            c.create_service()
                .cluster("v")
                .service_name("a")
                .task_definition("app")
                .scheduling_strategy(SchedulingStrategy::Daemon)
                .placement_strategy(
                    PlacementStrategy::builder()
                        .r#type(PlacementStrategyType::Spread)
                        .field("instanceId")
                        .build(),
                ),
            "InvalidParameterException",
            "DAEMON",
        ),
        (
            c.create_service()
                .cluster("v")
                .service_name("a")
                .task_definition("nope")
                .desired_count(1),
            "ClientException",
            "",
        ),
        (
            c.create_service()
                .cluster("v")
                .service_name("a")
                .task_definition("app")
                .desired_count(1)
                .placement_constraints(
                    aws_sdk_ecs::types::PlacementConstraint::builder()
                        .r#type(aws_sdk_ecs::types::PlacementConstraintType::MemberOf)
                        .expression("attribute:zone ==")
                        .build(),
                ),
            "InvalidParameterException",
            "",
        ),
        (
            c.create_service()
                .cluster("nowhere")
                .service_name("a")
                .task_definition("app")
                .desired_count(1),
            "ClusterNotFoundException",
            "",
        ),
    ];
    for (request, expected_code, expected_text) in cases {
        let error = request.send().await.unwrap_err();
        assert_eq!(code(&error), expected_code, "{}", message(&error));
        assert!(
            message(&error).contains(expected_text),
            "{}",
            message(&error)
        );
    }
    let listed = c.list_services().cluster("v").send().await.unwrap();
    assert!(listed.service_arns().is_empty());

    let error = c
        .update_service()
        .cluster("v")
        .service("ghost")
        .desired_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ServiceNotFoundException");

    // Idempotency: the same clientToken answers with the same service; no token conflicts.
    let first = c
        .create_service()
        .cluster("v")
        .service_name("once")
        .task_definition("app")
        .desired_count(0)
        .client_token("tok-1")
        .send()
        .await
        .unwrap();
    let again = c
        .create_service()
        .cluster("v")
        .service_name("once")
        .task_definition("app")
        .desired_count(0)
        .client_token("tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        first.service().unwrap().created_at(),
        again.service().unwrap().created_at()
    );
    let error = c
        .create_service()
        .cluster("v")
        .service_name("once")
        .task_definition("app")
        .desired_count(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    assert!(message(&error).contains("not idempotent"));

    // Deleting a service scaled above 0 needs force; a deleted one cannot be updated.
    c.update_service()
        .cluster("v")
        .service("once")
        .desired_count(2)
        .send()
        .await
        .unwrap();
    let error = c
        .delete_service()
        .cluster("v")
        .service("once")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    let deleted = c
        .delete_service()
        .cluster("v")
        .service("once")
        .force(true)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.service().unwrap().status(), Some("DRAINING"));
    let error = c
        .update_service()
        .cluster("v")
        .service("once")
        .desired_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ServiceNotActiveException");
    eventually("the service becomes INACTIVE", || async {
        describe(c, "v", "once").await.status() == Some("INACTIVE")
    })
    .await;
    assert!(
        c.list_services()
            .cluster("v")
            .send()
            .await
            .unwrap()
            .service_arns()
            .is_empty()
    );
}

#[tokio::test]
async fn a_stopped_task_is_replaced() {
    let t = start().await;
    let c = &t.client;
    t.cluster("heal").await;
    let agent = t
        .agent(FakeHost::new("heal", 4096, 8192), FakeMode::Manual)
        .await;
    register(c, "worker", 64).await;
    c.create_service()
        .cluster("heal")
        .service_name("worker")
        .task_definition("worker")
        .desired_count(2)
        .send()
        .await
        .unwrap();
    eventually("two tasks", || async {
        task_arns(c, "heal", "worker").await.len() == 2
    })
    .await;
    let first = task_arns(c, "heal", "worker").await;
    for arn in &first {
        agent.report(arn, TaskStatus::Running).await.unwrap();
    }
    wait_stable(c, "heal", "worker").await;

    // The container dies: the service starts a replacement.
    agent.report(&first[0], TaskStatus::Stopped).await.unwrap();
    eventually("a replacement task", || async {
        let now = task_arns(c, "heal", "worker").await;
        now.len() == 2 && !now.contains(&first[0])
    })
    .await;
    let now = task_arns(c, "heal", "worker").await;
    let replacement = now.iter().find(|a| !first.contains(a)).unwrap();
    agent
        .report(replacement, TaskStatus::Running)
        .await
        .unwrap();
    wait_stable(c, "heal", "worker").await;
    let service = describe(c, "heal", "worker").await;
    assert_eq!(service.running_count(), 2);

    // Scale in: one task is stopped by the scheduler, with ECS's stop code.
    c.update_service()
        .cluster("heal")
        .service("worker")
        .desired_count(1)
        .send()
        .await
        .unwrap();
    eventually("one task left", || async {
        task_arns(c, "heal", "worker").await.len() == 1
    })
    .await;
    let stopped = c
        .list_tasks()
        .cluster("heal")
        .service_name("worker")
        .desired_status(DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    let described = c
        .describe_tasks()
        .cluster("heal")
        .set_tasks(Some(stopped.task_arns().to_vec()))
        .send()
        .await
        .unwrap();
    assert!(described.tasks().iter().any(
        |t| t.stop_code() == Some(&aws_sdk_ecs::types::TaskStopCode::ServiceSchedulerInitiated)
    ));
}

#[tokio::test]
async fn a_rolling_update_replaces_every_task_and_collapses_to_one_deployment() {
    let t = start().await;
    let c = &t.client;
    t.cluster("roll").await;
    let _a = t
        .agent(FakeHost::new("roll", 8192, 8192), FakeMode::AutoRun)
        .await;
    register(c, "api", 64).await;
    let v2 = register(c, "api", 96).await;
    c.create_service()
        .cluster("roll")
        .service_name("api")
        .task_definition("api:1")
        .desired_count(4)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .minimum_healthy_percent(50)
                .maximum_percent(100)
                .build(),
        )
        .send()
        .await
        .unwrap();
    wait_stable(c, "roll", "api").await;
    let updated = c
        .update_service()
        .cluster("roll")
        .service("api")
        .task_definition("api")
        .send()
        .await
        .unwrap()
        .service
        .unwrap();
    assert_eq!(updated.deployments().len(), 2);
    assert_eq!(
        updated.deployments()[0].task_definition(),
        Some(v2.as_str())
    );
    assert_eq!(updated.deployments()[1].status(), Some("ACTIVE"));
    wait_stable(c, "roll", "api").await;
    let service = describe(c, "roll", "api").await;
    assert_eq!(service.deployments().len(), 1);
    assert_eq!(service.task_definition(), Some(v2.as_str()));
    let tasks = c
        .describe_tasks()
        .cluster("roll")
        .set_tasks(Some(task_arns(c, "roll", "api").await))
        .send()
        .await
        .unwrap()
        .tasks
        .unwrap();
    assert_eq!(tasks.len(), 4);
    assert!(
        tasks
            .iter()
            .all(|t| t.task_definition_arn() == Some(v2.as_str()))
    );
}

#[tokio::test]
async fn the_circuit_breaker_rolls_a_failing_revision_back() {
    // Restart gaps of 1 ms doubling, so ten failures take well under a second of waiting.
    let t = common::start_with(|config| config.engine.restart_delay_base_ms = 1).await;
    let c = &t.client;
    t.cluster("cb").await;
    let agent = t
        .agent(FakeHost::new("cb", 8192, 16384), FakeMode::Manual)
        .await;
    let good = register(c, "flaky", 64).await;
    let bad = register(c, "flaky", 65).await;
    c.create_service()
        .cluster("cb")
        .service_name("flaky")
        .task_definition(&good)
        .desired_count(2)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .deployment_circuit_breaker(
                    DeploymentCircuitBreaker::builder()
                        .enable(true)
                        .rollback(true)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    // Plays the hosts: revision 1 runs, revision 2 exits at once.
    let driver = {
        let c = c.clone();
        let good = good.clone();
        tokio::spawn(async move {
            let mut handled = std::collections::BTreeSet::new();
            loop {
                let arns = task_arns(&c, "cb", "flaky").await;
                let fresh: Vec<String> =
                    arns.into_iter().filter(|a| !handled.contains(a)).collect();
                if !fresh.is_empty() {
                    let tasks = c
                        .describe_tasks()
                        .cluster("cb")
                        .set_tasks(Some(fresh))
                        .send()
                        .await
                        .unwrap()
                        .tasks
                        .unwrap();
                    for task in tasks {
                        let arn = task.task_arn().unwrap().to_owned();
                        let status = if task.task_definition_arn() == Some(good.as_str()) {
                            TaskStatus::Running
                        } else {
                            TaskStatus::Stopped
                        };
                        agent.report(&arn, status).await.unwrap();
                        handled.insert(arn);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_stable(c, "cb", "flaky").await;
    c.update_service()
        .cluster("cb")
        .service("flaky")
        .task_definition(&bad)
        .send()
        .await
        .unwrap();
    // The threshold is clamp(2 / 2, 10, 200) = 10 failed tasks; while they fail, the old
    // revision keeps serving.
    eventually("failed tasks are counted", || async {
        let service = describe(c, "cb", "flaky").await;
        service
            .deployments()
            .iter()
            .any(|d| d.task_definition() == Some(bad.as_str()) && d.failed_tasks() >= 1)
    })
    .await;
    assert_eq!(describe(c, "cb", "flaky").await.running_count(), 2);
    eventually("the breaker trips and rolls back", || async {
        let service = describe(c, "cb", "flaky").await;
        service.task_definition() == Some(good.as_str())
            && service.events().iter().any(|e| {
                e.message()
                    .is_some_and(|m| m.contains("rolling back to deployment"))
            })
    })
    .await;
    wait_stable(c, "cb", "flaky").await;
    let service = describe(c, "cb", "flaky").await;
    assert_eq!(
        service.deployments()[0].task_definition(),
        Some(good.as_str())
    );
    let messages: Vec<&str> = service
        .events()
        .iter()
        .filter_map(|e| e.message())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("deployment failed: tasks failed to start")),
        "{messages:?}"
    );
    driver.abort();
}

#[tokio::test]
async fn a_daemon_service_follows_hosts_joining_and_draining() {
    let t = start().await;
    let c = &t.client;
    t.cluster("d").await;
    let _a = t
        .agent(FakeHost::new("d", 1024, 2048), FakeMode::AutoRun)
        .await;
    let b = t
        .agent(FakeHost::new("d", 1024, 2048), FakeMode::AutoRun)
        .await;
    register(c, "logs", 32).await;
    let created = c
        .create_service()
        .cluster("d")
        .service_name("logs")
        .task_definition("logs")
        .scheduling_strategy(SchedulingStrategy::Daemon)
        .send()
        .await
        .unwrap()
        .service
        .unwrap();
    let config = created.deployment_configuration().unwrap();
    assert_eq!(config.maximum_percent(), Some(100));
    assert_eq!(config.minimum_healthy_percent(), Some(0));
    eventually("a daemon task on each host", || async {
        describe(c, "d", "logs").await.running_count() == 2
    })
    .await;
    wait_stable(c, "d", "logs").await;
    assert_eq!(describe(c, "d", "logs").await.desired_count(), 2);

    let _c3 = t
        .agent(FakeHost::new("d", 1024, 2048), FakeMode::AutoRun)
        .await;
    eventually("a daemon task on the new host", || async {
        task_arns(c, "d", "logs").await.len() == 3
    })
    .await;
    wait_stable(c, "d", "logs").await;

    c.update_container_instances_state()
        .cluster("d")
        .container_instances(&b.container_instance_arn)
        .status(ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    eventually("the draining host loses its daemon task", || async {
        let service = describe(c, "d", "logs").await;
        service.desired_count() == 2 && task_arns(c, "d", "logs").await.len() == 2
    })
    .await;
    let on_b = c
        .list_tasks()
        .cluster("d")
        .container_instance(&b.container_instance_arn)
        .send()
        .await
        .unwrap();
    assert!(on_b.task_arns().is_empty());
}

#[tokio::test]
async fn an_unplaceable_service_says_why_in_its_events() {
    let t = start().await;
    let c = &t.client;
    t.cluster("full").await;
    let _a = t
        .agent(FakeHost::new("full", 1024, 512), FakeMode::AutoRun)
        .await;
    register(c, "huge", 4096).await;
    c.create_service()
        .cluster("full")
        .service_name("huge")
        .task_definition("huge")
        .desired_count(1)
        .send()
        .await
        .unwrap();
    eventually("a placement failure event", || async {
        describe(c, "full", "huge").await.events().iter().any(|e| {
            e.message().is_some_and(|m| {
                m.starts_with(
                    "(service huge) was unable to place a task because no container instance met all of its requirements.",
                ) && m.contains("The closest matching (container-instance ")
                    && m.contains("insufficient memory")
            })
        })
    })
    .await;
}

#[tokio::test]
async fn services_survive_a_restart_and_keep_reconciling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let open = || -> std::sync::Arc<dyn flotilla_store::Store> {
        std::sync::Arc::new(flotilla_store::RedbStore::open(&path).unwrap())
    };
    let config = |listen: std::net::SocketAddr| {
        let mut config = flotilla_server::ServerConfig::new(
            listen,
            flotilla_api::sigv4::Credentials {
                access_key_id: flotilla_testkit::TEST_ACCESS_KEY_ID.into(),
                secret_access_key: flotilla_testkit::TEST_SECRET_ACCESS_KEY.into(),
            },
        );
        config.engine.healthy_after_running_ms = 500;
        config
    };
    let server = flotilla_server::start(config("127.0.0.1:0".parse().unwrap()), open())
        .await
        .unwrap();
    let address = server.local_addr;
    let endpoint = server.endpoint();
    let c = common::client_for(&endpoint, flotilla_testkit::TEST_SECRET_ACCESS_KEY).await;
    c.create_cluster().cluster_name("r").send().await.unwrap();
    let _agent = FakeAgent::start(&endpoint, FakeHost::new("r", 4096, 8192), FakeMode::AutoRun)
        .await
        .unwrap();
    register(&c, "keep", 64).await;
    c.create_service()
        .cluster("r")
        .service_name("keep")
        .task_definition("keep")
        .desired_count(2)
        .send()
        .await
        .unwrap();
    wait_stable(&c, "r", "keep").await;
    let before = describe(&c, "r", "keep").await;
    server.shutdown().await;

    // Same store, same address: the agent reconnects and the service carries on.
    let server = flotilla_server::start(config(address), open())
        .await
        .unwrap();
    let after = describe(&c, "r", "keep").await;
    assert_eq!(after.deployments()[0].id(), before.deployments()[0].id());
    assert_eq!(after.running_count(), 2);
    c.update_service()
        .cluster("r")
        .service("keep")
        .desired_count(3)
        .send()
        .await
        .unwrap();
    wait_stable(&c, "r", "keep").await;
    assert_eq!(task_arns(&c, "r", "keep").await.len(), 3);
    server.shutdown().await;
}
