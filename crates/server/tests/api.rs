//! The ECS API driven by the AWS SDK for Rust against an in-process server, with fake agents.

mod common;

use aws_sdk_ecs::types::{
    ClusterField, ContainerInstanceStatus, ContainerOverride, DesiredStatus, KeyValuePair,
    PortMapping, Tag, TaskDefinitionStatus, TaskOverride,
};
use common::*;
use flotilla_model::TaskStatus;
use flotilla_testkit::{FakeHost, FakeMode};

#[tokio::test]
async fn clusters_create_describe_list_update_delete() {
    let t = start().await;
    let c = &t.client;
    let created = c
        .create_cluster()
        .cluster_name("prod")
        .tags(Tag::builder().key("team").value("core").build())
        .send()
        .await
        .unwrap();
    let cluster = created.cluster.unwrap();
    assert_eq!(
        cluster.cluster_arn.as_deref(),
        Some("arn:aws:ecs:us-east-1:000000000000:cluster/prod")
    );
    assert_eq!(cluster.status.as_deref(), Some("ACTIVE"));
    // Creating again returns the same cluster.
    let again = c
        .create_cluster()
        .cluster_name("prod")
        .send()
        .await
        .unwrap();
    assert_eq!(again.cluster.unwrap().cluster_arn, cluster.cluster_arn);

    let described = c
        .describe_clusters()
        .clusters("prod")
        .clusters("missing")
        .include(ClusterField::Tags)
        .include(ClusterField::Statistics)
        .include(ClusterField::Settings)
        .send()
        .await
        .unwrap();
    let clusters = described.clusters.unwrap();
    assert_eq!(clusters.len(), 1);
    assert_eq!(
        clusters[0].tags.as_ref().unwrap()[0].key.as_deref(),
        Some("team")
    );
    assert!(
        clusters[0]
            .statistics
            .as_ref()
            .unwrap()
            .iter()
            .any(|s| s.name.as_deref() == Some("runningEC2TasksCount"))
    );
    assert_eq!(
        clusters[0].settings.as_ref().unwrap()[0].value.as_deref(),
        Some("disabled")
    );
    let failures = described.failures.unwrap();
    assert_eq!(failures[0].reason.as_deref(), Some("MISSING"));
    assert_eq!(
        failures[0].arn.as_deref(),
        Some("arn:aws:ecs:us-east-1:000000000000:cluster/missing")
    );

    let updated = c
        .update_cluster_settings()
        .cluster("prod")
        .settings(
            aws_sdk_ecs::types::ClusterSetting::builder()
                .name("containerInsights".into())
                .value("enabled")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        updated.cluster.unwrap().settings.unwrap()[0]
            .value
            .as_deref(),
        Some("enabled")
    );

    let error = c
        .update_cluster_settings()
        .cluster("prod")
        .settings(
            aws_sdk_ecs::types::ClusterSetting::builder()
                .name("containerInsights".into())
                .value("loud")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");

    let with_providers = c
        .put_cluster_capacity_providers()
        .cluster("prod")
        .capacity_providers("FARGATE")
        .default_capacity_provider_strategy(
            aws_sdk_ecs::types::CapacityProviderStrategyItem::builder()
                .capacity_provider("FARGATE")
                .weight(1)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        with_providers.cluster.unwrap().capacity_providers.unwrap(),
        vec!["FARGATE".to_owned()]
    );

    let deleted = c.delete_cluster().cluster("prod").send().await.unwrap();
    assert_eq!(deleted.cluster.unwrap().status.as_deref(), Some("INACTIVE"));
    let error = c.delete_cluster().cluster("prod").send().await.unwrap_err();
    assert_eq!(code(&error), "ClusterNotFoundException");
    let listed = c.list_clusters().send().await.unwrap();
    assert!(
        !listed
            .cluster_arns
            .unwrap()
            .iter()
            .any(|a| a.ends_with("/prod"))
    );
}

#[tokio::test]
async fn list_clusters_paginates() {
    let t = start().await;
    for i in 0..7 {
        t.client
            .create_cluster()
            .cluster_name(format!("c{i}"))
            .send()
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = t
            .client
            .list_clusters()
            .max_results(3)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        let arns = page.cluster_arns.unwrap();
        assert!(arns.len() <= 3);
        seen.extend(arns);
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 7);
    let error = t
        .client
        .list_clusters()
        .next_token("bogus!")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    let error = t
        .client
        .list_clusters()
        .max_results(1000)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
}

#[tokio::test]
async fn task_definitions_register_describe_list_deregister_delete() {
    let t = start().await;
    let c = &t.client;
    for _ in 0..3 {
        c.register_task_definition()
            .family("web")
            .container_definitions(container("app", 128))
            .tags(Tag::builder().key("env").value("test").build())
            .send()
            .await
            .unwrap();
    }
    let latest = c
        .describe_task_definition()
        .task_definition("web")
        .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
        .send()
        .await
        .unwrap();
    let td = latest.task_definition.unwrap();
    assert_eq!(td.revision, 3);
    assert_eq!(
        td.task_definition_arn.as_deref(),
        Some("arn:aws:ecs:us-east-1:000000000000:task-definition/web:3")
    );
    assert_eq!(
        td.container_definitions.as_ref().unwrap()[0].essential,
        Some(true)
    );
    assert_eq!(latest.tags.unwrap()[0].key.as_deref(), Some("env"));

    let by_revision = c
        .describe_task_definition()
        .task_definition("web:1")
        .send()
        .await
        .unwrap();
    assert_eq!(by_revision.task_definition.unwrap().revision, 1);

    c.deregister_task_definition()
        .task_definition("web:3")
        .send()
        .await
        .unwrap();
    let latest = c
        .describe_task_definition()
        .task_definition("web")
        .send()
        .await
        .unwrap();
    assert_eq!(
        latest.task_definition.unwrap().revision,
        2,
        "family resolves to the latest ACTIVE revision"
    );

    let active = c
        .list_task_definitions()
        .family_prefix("web")
        .send()
        .await
        .unwrap();
    assert_eq!(active.task_definition_arns.unwrap().len(), 2);
    let inactive = c
        .list_task_definitions()
        .status(TaskDefinitionStatus::Inactive)
        .send()
        .await
        .unwrap();
    assert_eq!(inactive.task_definition_arns.unwrap().len(), 1);
    let desc = c
        .list_task_definitions()
        .sort(aws_sdk_ecs::types::SortOrder::Desc)
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert!(desc.task_definition_arns.unwrap()[0].ends_with("web:2"));
    assert!(desc.next_token.is_some());
    let families = c
        .list_task_definition_families()
        .family_prefix("we")
        .send()
        .await
        .unwrap();
    assert_eq!(families.families.unwrap(), vec!["web".to_owned()]);

    let deleted = c
        .delete_task_definitions()
        .task_definitions("web:3")
        .task_definitions("web:1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleted.task_definitions.unwrap()[0].status,
        Some(TaskDefinitionStatus::DeleteInProgress)
    );
    assert!(
        deleted.failures.unwrap()[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("ACTIVE")
    );

    // Revisions are never reused.
    let next = c
        .register_task_definition()
        .family("web")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap();
    assert_eq!(next.task_definition.unwrap().revision, 4);
}

#[tokio::test]
async fn invalid_task_definitions_are_refused_and_change_nothing() {
    let t = start().await;
    let c = &t.client;
    let error = c
        .register_task_definition()
        .family("bad")
        .container_definitions(container("a", 128))
        .container_definitions(container("a", 128))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException", "{}", message(&error));
    let error = c
        .register_task_definition()
        .family("bad")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("x")
                .image("busybox")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException");
    assert!(message(&error).contains("memory"), "{}", message(&error));
    let error = c
        .register_task_definition()
        .family("bad")
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .cpu("256")
        .memory("4096")
        .container_definitions(container("x", 128))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException");
    let families = c
        .list_task_definition_families()
        .status(aws_sdk_ecs::types::TaskDefinitionFamilyStatus::All)
        .send()
        .await
        .unwrap();
    assert!(
        families.families.unwrap().is_empty(),
        "a refused registration stores nothing"
    );
    let error = c
        .describe_task_definition()
        .task_definition("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException");
}

#[tokio::test]
async fn run_task_places_reports_and_stops() {
    let t = start().await;
    let c = &t.client;
    t.cluster("apps").await;
    let agent = t
        .agent(FakeHost::new("apps", 1024, 2048), FakeMode::Manual)
        .await;
    c.register_task_definition()
        .family("svc")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("busybox")
                .cpu(256)
                .memory(512)
                .port_mappings(
                    PortMapping::builder()
                        .container_port(80)
                        .host_port(8080)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let run = c
        .run_task()
        .cluster("apps")
        .task_definition("svc")
        .started_by("tester")
        .overrides(
            TaskOverride::builder()
                .container_overrides(
                    ContainerOverride::builder()
                        .name("app")
                        .environment(KeyValuePair::builder().name("A").value("1").build())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let task = &run.tasks.unwrap()[0];
    let task_arn = task.task_arn.clone().unwrap();
    assert!(task_arn.starts_with("arn:aws:ecs:us-east-1:000000000000:task/apps/"));
    assert_eq!(task.last_status.as_deref(), Some("PROVISIONING"));
    assert_eq!(task.desired_status.as_deref(), Some("RUNNING"));
    assert_eq!(
        task.container_instance_arn.as_deref(),
        Some(agent.container_instance_arn.as_str())
    );

    // The second task needs port 8080 too: ECS reports RESOURCE:PORTS.
    let second = c
        .run_task()
        .cluster("apps")
        .task_definition("svc")
        .send()
        .await
        .unwrap();
    assert!(second.tasks.unwrap().is_empty());
    assert_eq!(
        second.failures.unwrap()[0].reason.as_deref(),
        Some("RESOURCE:PORTS")
    );

    // The instance shows the reservation.
    let instances = c
        .describe_container_instances()
        .cluster("apps")
        .container_instances(&agent.container_instance_arn)
        .send()
        .await
        .unwrap();
    let instance = &instances.container_instances.unwrap()[0];
    let cpu = instance
        .remaining_resources
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.name.as_deref() == Some("CPU"))
        .unwrap();
    assert_eq!(cpu.integer_value, 768);
    assert_eq!(instance.pending_tasks_count, 1);

    // The agent picks it up and reports it running.
    eventually("agent sees the task", || async {
        agent.seen_tasks().contains(&task_arn)
    })
    .await;
    agent.report(&task_arn, TaskStatus::Running).await.unwrap();
    let described = c
        .describe_tasks()
        .cluster("apps")
        .tasks(&task_arn)
        .send()
        .await
        .unwrap();
    let running = &described.tasks.unwrap()[0];
    assert_eq!(running.last_status.as_deref(), Some("RUNNING"));
    assert!(running.started_at.is_some());

    let listed = c
        .list_tasks()
        .cluster("apps")
        .started_by("tester")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.task_arns.unwrap(), vec![task_arn.clone()]);

    let stopped = c
        .stop_task()
        .cluster("apps")
        .task(&task_arn)
        .reason("done")
        .send()
        .await
        .unwrap();
    let stopping = stopped.task.unwrap();
    assert_eq!(stopping.desired_status.as_deref(), Some("STOPPED"));
    assert_eq!(
        stopping.stop_code,
        Some(aws_sdk_ecs::types::TaskStopCode::UserInitiated)
    );
    assert_eq!(stopping.stopped_reason.as_deref(), Some("done"));
    // The fake agent sees desired STOPPED and reports STOPPED; resources come back.
    eventually("task stops", || async {
        let d = c
            .describe_tasks()
            .cluster("apps")
            .tasks(&task_arn)
            .send()
            .await
            .unwrap();
        d.tasks.unwrap()[0].last_status.as_deref() == Some("STOPPED")
    })
    .await;
    let instances = c
        .describe_container_instances()
        .cluster("apps")
        .container_instances(&agent.container_instance_arn)
        .send()
        .await
        .unwrap();
    let instance = &instances.container_instances.unwrap()[0];
    let cpu = instance
        .remaining_resources
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.name.as_deref() == Some("CPU"))
        .unwrap();
    assert_eq!(cpu.integer_value, 1024);
    let stopped_list = c
        .list_tasks()
        .cluster("apps")
        .desired_status(DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped_list.task_arns.unwrap().len(), 1);
    let d = c
        .describe_tasks()
        .cluster("apps")
        .tasks(&task_arn)
        .send()
        .await
        .unwrap();
    let t0 = &d.tasks.unwrap()[0];
    assert_eq!(
        t0.stop_code,
        Some(aws_sdk_ecs::types::TaskStopCode::UserInitiated)
    );
    assert!(t0.stopped_at.is_some() && t0.stopping_at.is_some());
}

#[tokio::test]
async fn run_task_errors_and_idempotency() {
    let t = start().await;
    let c = &t.client;
    t.cluster("e").await;
    c.register_task_definition()
        .family("x")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap();
    let error = c
        .run_task()
        .cluster("e")
        .task_definition("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    assert!(
        message(&error).contains("No Container Instances"),
        "{}",
        message(&error)
    );
    let error = c
        .run_task()
        .cluster("nope")
        .task_definition("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClusterNotFoundException");
    let _agent = t
        .agent(FakeHost::new("e", 4096, 8192), FakeMode::AutoRun)
        .await;
    let error = c
        .run_task()
        .cluster("e")
        .task_definition("x")
        .count(11)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    let error = c
        .run_task()
        .cluster("e")
        .task_definition("missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClientException");

    let first = c
        .run_task()
        .cluster("e")
        .task_definition("x")
        .count(2)
        .client_token("tok-1")
        .send()
        .await
        .unwrap();
    let again = c
        .run_task()
        .cluster("e")
        .task_definition("x")
        .count(2)
        .client_token("tok-1")
        .send()
        .await
        .unwrap();
    let arns = |r: &aws_sdk_ecs::operation::run_task::RunTaskOutput| {
        let mut a: Vec<String> = r
            .tasks()
            .iter()
            .filter_map(|t| t.task_arn.clone())
            .collect();
        a.sort();
        a
    };
    assert_eq!(arns(&first), arns(&again), "same token, same tasks");
    assert_eq!(arns(&first).len(), 2);
    let error = c
        .run_task()
        .cluster("e")
        .task_definition("x")
        .count(1)
        .client_token("tok-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ConflictException");
    let all = c.list_tasks().cluster("e").send().await.unwrap();
    assert_eq!(
        all.task_arns.unwrap().len(),
        2,
        "retries created nothing more"
    );

    let error = c.describe_tasks().cluster("e").send().await.unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    let missing = c
        .describe_tasks()
        .cluster("e")
        .tasks("0123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.failures.unwrap()[0].reason.as_deref(),
        Some("MISSING")
    );
    let error = c
        .stop_task()
        .cluster("e")
        .task("0123")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
}

#[tokio::test]
async fn container_instances_attributes_drain_and_deregister() {
    let t = start().await;
    let c = &t.client;
    t.cluster("hosts").await;
    let a = t
        .agent(FakeHost::new("hosts", 2048, 4096), FakeMode::AutoRun)
        .await;
    let b = t
        .agent(FakeHost::new("hosts", 2048, 4096), FakeMode::AutoRun)
        .await;
    let listed = c
        .list_container_instances()
        .cluster("hosts")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.container_instance_arns.unwrap().len(), 2);

    let put = c
        .put_attributes()
        .cluster("hosts")
        .attributes(
            aws_sdk_ecs::types::Attribute::builder()
                .name("stack")
                .value("prod")
                .target_id(&a.container_instance_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.attributes.unwrap()[0].target_id.as_deref(),
        Some(a.container_instance_arn.as_str())
    );
    let attrs = c
        .list_attributes()
        .cluster("hosts")
        .target_type(aws_sdk_ecs::types::TargetType::ContainerInstance)
        .attribute_name("stack")
        .send()
        .await
        .unwrap();
    assert_eq!(attrs.attributes.unwrap().len(), 1);
    let error = c
        .put_attributes()
        .cluster("hosts")
        .attributes(
            aws_sdk_ecs::types::Attribute::builder()
                .name("stack")
                .value("x")
                .target_id("nope")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "TargetNotFoundException");
    let filtered = c
        .list_container_instances()
        .cluster("hosts")
        .filter("attribute:stack == prod")
        .send()
        .await
        .unwrap();
    assert_eq!(
        filtered.container_instance_arns.unwrap(),
        vec![a.container_instance_arn.clone()]
    );
    let error = c
        .list_container_instances()
        .cluster("hosts")
        .filter("attribute:stack ==")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    c.delete_attributes()
        .cluster("hosts")
        .attributes(
            aws_sdk_ecs::types::Attribute::builder()
                .name("stack")
                .target_id(&a.container_instance_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let drained = c
        .update_container_instances_state()
        .cluster("hosts")
        .container_instances(&b.container_instance_arn)
        .status(ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    assert_eq!(
        drained.container_instances.unwrap()[0].status.as_deref(),
        Some("DRAINING")
    );
    let draining = c
        .list_container_instances()
        .cluster("hosts")
        .status(ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    assert_eq!(
        draining.container_instance_arns.unwrap(),
        vec![b.container_instance_arn.clone()]
    );

    // Tasks never land on a draining instance.
    c.register_task_definition()
        .family("p")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap();
    let run = c
        .run_task()
        .cluster("hosts")
        .task_definition("p")
        .count(3)
        .send()
        .await
        .unwrap();
    for task in run.tasks.unwrap() {
        assert_eq!(
            task.container_instance_arn.as_deref(),
            Some(a.container_instance_arn.as_str())
        );
    }
    let error = c
        .delete_cluster()
        .cluster("hosts")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ClusterContainsContainerInstancesException");
    let error = c
        .deregister_container_instance()
        .cluster("hosts")
        .container_instance(&a.container_instance_arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        "InvalidParameterException",
        "tasks still run there"
    );
    let gone = c
        .deregister_container_instance()
        .cluster("hosts")
        .container_instance(&a.container_instance_arn)
        .force(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        gone.container_instance.unwrap().status.as_deref(),
        Some("INACTIVE")
    );
    c.deregister_container_instance()
        .cluster("hosts")
        .container_instance(&b.container_instance_arn)
        .send()
        .await
        .unwrap();
    let stopped = c
        .list_tasks()
        .cluster("hosts")
        .desired_status(DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stopped.task_arns.unwrap().len(),
        3,
        "orphaned tasks are recorded as stopped"
    );
    c.delete_cluster().cluster("hosts").send().await.unwrap();
}

#[tokio::test]
async fn silent_agents_are_marked_disconnected() {
    let t = start_with(|config| config.disconnect_timeout = std::time::Duration::from_millis(600))
        .await;
    let c = &t.client;
    t.cluster("hb").await;
    let agent = t
        .agent(FakeHost::new("hb", 1024, 1024), FakeMode::AutoRun)
        .await;
    let arn = agent.container_instance_arn.clone();
    let connected = |c: aws_sdk_ecs::Client, arn: String| async move {
        let d = c
            .describe_container_instances()
            .cluster("hb")
            .container_instances(arn)
            .send()
            .await
            .unwrap();
        d.container_instances.unwrap()[0].agent_connected
    };
    assert!(connected(c.clone(), arn.clone()).await);
    agent.kill().await;
    eventually("instance marked disconnected", || {
        connected(c.clone(), arn.clone()).then_not()
    })
    .await;
    c.register_task_definition()
        .family("hb")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap();
    let run = c
        .run_task()
        .cluster("hb")
        .task_definition("hb")
        .send()
        .await
        .unwrap();
    assert!(
        run.tasks.unwrap().is_empty(),
        "no placement on a disconnected host"
    );
}

trait ThenNot {
    fn then_not(self) -> impl std::future::Future<Output = bool>;
}
impl<F: std::future::Future<Output = bool>> ThenNot for F {
    async fn then_not(self) -> bool {
        !self.await
    }
}

#[tokio::test]
async fn tags_on_every_taggable_resource() {
    let t = start().await;
    let c = &t.client;
    let cluster_arn = c
        .create_cluster()
        .cluster_name("tg")
        .send()
        .await
        .unwrap()
        .cluster
        .unwrap()
        .cluster_arn
        .unwrap();
    let td_arn = c
        .register_task_definition()
        .family("tg")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap()
        .task_definition_arn
        .unwrap();
    let agent = t
        .agent(FakeHost::new("tg", 1024, 1024), FakeMode::AutoRun)
        .await;
    let task_arn = c
        .run_task()
        .cluster("tg")
        .task_definition("tg")
        .send()
        .await
        .unwrap()
        .tasks
        .unwrap()[0]
        .task_arn
        .clone()
        .unwrap();
    for arn in [
        &cluster_arn,
        &td_arn,
        &agent.container_instance_arn,
        &task_arn,
    ] {
        c.tag_resource()
            .resource_arn(arn)
            .tags(Tag::builder().key("k").value("v").build())
            .send()
            .await
            .unwrap();
        c.tag_resource()
            .resource_arn(arn)
            .tags(Tag::builder().key("k").value("w").build())
            .send()
            .await
            .unwrap();
        let tags = c
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .unwrap()
            .tags
            .unwrap();
        assert_eq!(tags.len(), 1, "{arn}");
        assert_eq!(tags[0].value.as_deref(), Some("w"));
        c.untag_resource()
            .resource_arn(arn)
            .tag_keys("k")
            .send()
            .await
            .unwrap();
        assert!(
            c.list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .unwrap()
                .tags
                .unwrap()
                .is_empty()
        );
    }
    let error = c
        .tag_resource()
        .resource_arn(&cluster_arn)
        .tags(Tag::builder().key("aws:x").value("v").build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    let error = c
        .list_tags_for_resource()
        .resource_arn("arn:aws:ecs:us-east-1:000000000000:task/tg/0000")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
}

#[tokio::test]
async fn account_settings() {
    let t = start().await;
    let c = &t.client;
    // At most 10 per page, as in ECS: the SDK's paginator follows nextToken.
    let first = c
        .list_account_settings()
        .effective_settings(true)
        .send()
        .await
        .unwrap();
    assert_eq!(first.settings.unwrap().len(), 10);
    assert!(first.next_token.is_some());
    let effective: Vec<aws_sdk_ecs::types::Setting> = c
        .list_account_settings()
        .effective_settings(true)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(effective.len(), 11);
    assert!(
        effective
            .iter()
            .any(|s| s.name() == Some(&aws_sdk_ecs::types::SettingName::TaskLongArnFormat))
    );
    let put = c
        .put_account_setting()
        .name(aws_sdk_ecs::types::SettingName::ContainerInsights)
        .value("enabled")
        .send()
        .await
        .unwrap();
    assert_eq!(put.setting.unwrap().value.as_deref(), Some("enabled"));
    let own = c.list_account_settings().send().await.unwrap();
    assert_eq!(own.settings.unwrap().len(), 1);
    c.put_account_setting_default()
        .name(aws_sdk_ecs::types::SettingName::AwsvpcTrunking)
        .value("enabled")
        .send()
        .await
        .unwrap();
    let error = c
        .put_account_setting()
        .name(aws_sdk_ecs::types::SettingName::TaskLongArnFormat)
        .value("disabled")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "UnsupportedFeatureException");
    c.delete_account_setting()
        .name(aws_sdk_ecs::types::SettingName::ContainerInsights)
        .send()
        .await
        .unwrap();
    assert!(
        c.list_account_settings()
            .send()
            .await
            .unwrap()
            .settings
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let t = start().await;
    let wrong = client_for(&t.endpoint, "not-the-secret").await;
    let error = wrong.list_clusters().send().await.unwrap_err();
    assert_eq!(code(&error), "InvalidSignatureException");
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/", t.endpoint))
        .header(
            "x-amz-target",
            "AmazonEC2ContainerServiceV20141113.ListClusters",
        )
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "MissingAuthenticationTokenException");
}

#[tokio::test]
async fn raw_protocol_errors_have_aws_shapes() {
    let t = start().await;
    let client = flotilla_agent::ServerClient::new(&t.endpoint, flotilla_testkit::test_identity());
    let err = client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.Frobnicate",
            &serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, flotilla_agent::ClientError::Refused { ref code, status: 400, .. } if code == "UnknownOperationException"),
        "{err:?}"
    );
    let err = client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.RunTask",
            &serde_json::json!({"count": "x"}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, flotilla_agent::ClientError::Refused { ref code, .. } if code == "SerializationException"),
        "{err:?}"
    );
    let err = client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.RunTask",
            &serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, flotilla_agent::ClientError::Refused { ref code, ref message, .. } if code == "InvalidParameterException" && message.contains("taskDefinition")),
        "{err:?}"
    );
    let err = client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.CreateTaskSet",
            &serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, flotilla_agent::ClientError::Refused { ref code, .. } if code == "UnsupportedFeatureException"),
        "{err:?}"
    );
    let huge = "x".repeat(flotilla_api::REQUEST_BODY_BYTES_MAX + 10);
    let err = client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.CreateCluster",
            &serde_json::json!({"clusterName": huge}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            flotilla_agent::ClientError::Refused { status: 413, .. }
        ),
        "{err:?}"
    );
    let err = client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.RunTask",
            &serde_json::json!({"taskDefinition": "x", "volumeConfigurations": [{"name": "v"}]}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, flotilla_agent::ClientError::Refused { ref code, ref message, .. } if code == "UnsupportedFeatureException" && message.contains("volumeConfigurations")),
        "{err:?}"
    );
    let metrics = reqwest::get(format!("{}/metrics", t.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("flotilla_api_requests_total"), "{metrics}");
    assert!(metrics.contains("UnknownOperationException"));
}

#[tokio::test]
async fn default_cluster_is_created_on_first_use() {
    let t = start().await;
    let listed = t.client.list_tasks().send().await.unwrap();
    assert!(listed.task_arns.unwrap().is_empty());
    let clusters = t.client.describe_clusters().send().await.unwrap();
    assert_eq!(
        clusters.clusters.unwrap()[0].cluster_name.as_deref(),
        Some("default")
    );
}

#[tokio::test]
async fn start_task_register_container_instance_and_capacity_providers() {
    let t = start().await;
    let c = &t.client;
    t.cluster("st").await;
    // Registration through the ECS API itself (as AWS's own agent does).
    let registration = || {
        c.register_container_instance()
            .cluster("st")
            .instance_identity_document(r#"{"instanceId": "i-0123456789abcdef0"}"#)
            .total_resources(
                aws_sdk_ecs::types::Resource::builder()
                    .name("CPU")
                    .r#type("INTEGER")
                    .integer_value(1024)
                    .build(),
            )
            .total_resources(
                aws_sdk_ecs::types::Resource::builder()
                    .name("MEMORY")
                    .r#type("INTEGER")
                    .integer_value(512)
                    .build(),
            )
    };
    let registered = registration()
        .attributes(
            aws_sdk_ecs::types::Attribute::builder()
                .name("ecs.availability-zone")
                .value("zone-b")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .container_instance
        .unwrap();
    assert_eq!(
        registered.ec2_instance_id.as_deref(),
        Some("i-0123456789abcdef0")
    );
    assert_eq!(registered.status.as_deref(), Some("ACTIVE"));
    let registered_arn = registered.container_instance_arn.clone().unwrap();
    // Re-registering the same EC2 instance keeps its identity.
    let register_again = || registration().send();
    let again = register_again().await.unwrap().container_instance.unwrap();
    assert_eq!(
        again.container_instance_arn.as_deref(),
        Some(registered_arn.as_str())
    );

    c.register_task_definition()
        .family("st")
        .container_definitions(container("app", 256))
        .send()
        .await
        .unwrap();
    let started = c
        .start_task()
        .cluster("st")
        .task_definition("st")
        .container_instances(&registered_arn)
        .container_instances(&registered_arn)
        .container_instances("ghost")
        .send()
        .await
        .unwrap();
    assert_eq!(
        started.tasks.unwrap().len(),
        2,
        "two tasks of 256 MiB fit in 512"
    );
    let failures = started.failures.unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.reason.as_deref() == Some("MISSING"))
    );
    let full = c
        .start_task()
        .cluster("st")
        .task_definition("st")
        .container_instances(&registered_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        full.failures.unwrap()[0].reason.as_deref(),
        Some("RESOURCE:MEMORY")
    );
    // A host registering again (an agent restart) keeps what its tasks hold.
    let again = register_again().await.unwrap().container_instance.unwrap();
    let memory_left = again
        .remaining_resources
        .unwrap()
        .into_iter()
        .find(|r| r.name.as_deref() == Some("MEMORY"))
        .map(|r| r.integer_value);
    assert_eq!(memory_left, Some(0), "both tasks still hold 256 MiB each");

    let providers = c.describe_capacity_providers().send().await.unwrap();
    let names: Vec<String> = providers
        .capacity_providers
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["FARGATE".to_owned(), "FARGATE_SPOT".to_owned()]);
    let missing = c
        .describe_capacity_providers()
        .capacity_providers("mine")
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.failures.unwrap()[0].reason.as_deref(),
        Some("MISSING")
    );

    let updated = c
        .update_cluster()
        .cluster("st")
        .configuration(
            aws_sdk_ecs::types::ClusterConfiguration::builder()
                .execute_command_configuration(
                    aws_sdk_ecs::types::ExecuteCommandConfiguration::builder()
                        .logging(aws_sdk_ecs::types::ExecuteCommandLogging::Default)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(updated.cluster.unwrap().configuration.is_some());
    let error = c.update_cluster().cluster("nope").send().await.unwrap_err();
    assert_eq!(code(&error), "ClusterNotFoundException");
}

#[tokio::test]
async fn list_tasks_filters_and_pages() {
    let t = start().await;
    let c = &t.client;
    t.cluster("lt").await;
    let a = t
        .agent(FakeHost::new("lt", 100_000, 100_000), FakeMode::AutoRun)
        .await;
    let b = t
        .agent(FakeHost::new("lt", 100_000, 100_000), FakeMode::AutoRun)
        .await;
    c.register_task_definition()
        .family("one")
        .container_definitions(container("app", 8))
        .send()
        .await
        .unwrap();
    c.register_task_definition()
        .family("two")
        .container_definitions(container("app", 8))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        c.run_task()
            .cluster("lt")
            .task_definition("one")
            .count(4)
            .started_by("me")
            .send()
            .await
            .unwrap();
    }
    let placed = c
        .start_task()
        .cluster("lt")
        .task_definition("two")
        .container_instances(&b.container_instance_arn)
        .enable_ecs_managed_tags(true)
        .send()
        .await
        .unwrap();
    let two_arn = placed.tasks.unwrap()[0].task_arn.clone().unwrap();
    let tags = c
        .list_tags_for_resource()
        .resource_arn(&two_arn)
        .send()
        .await
        .unwrap()
        .tags
        .unwrap();
    assert_eq!(tags[0].key.as_deref(), Some("aws:ecs:clusterName"));
    let all: Vec<String> = c
        .list_tasks()
        .cluster("lt")
        .max_results(5)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(all.len(), 13);
    let one = c
        .list_tasks()
        .cluster("lt")
        .family("one")
        .send()
        .await
        .unwrap()
        .task_arns
        .unwrap();
    assert_eq!(one.len(), 12);
    let mine = c
        .list_tasks()
        .cluster("lt")
        .started_by("me")
        .send()
        .await
        .unwrap()
        .task_arns
        .unwrap();
    assert_eq!(mine.len(), 12);
    let on_b = c
        .list_tasks()
        .cluster("lt")
        .container_instance(&b.container_instance_arn)
        .send()
        .await
        .unwrap()
        .task_arns
        .unwrap();
    let on_a = c
        .list_tasks()
        .cluster("lt")
        .container_instance(&a.container_instance_arn)
        .send()
        .await
        .unwrap()
        .task_arns
        .unwrap();
    assert_eq!(on_a.len() + on_b.len(), 13);
    assert!(on_b.contains(&two_arn));
    let fargate = c
        .list_tasks()
        .cluster("lt")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .send()
        .await
        .unwrap();
    assert!(fargate.task_arns.unwrap().is_empty());
    let error = c
        .run_task()
        .cluster("lt")
        .task_definition("one")
        .platform_version("LATEST")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
}

#[tokio::test]
async fn placement_constraints_and_strategies_through_run_task() {
    let t = start().await;
    let c = &t.client;
    t.cluster("pl").await;
    let mut zone_b = FakeHost::new("pl", 4096, 4096);
    zone_b.zone = "zone-b".into();
    zone_b.attributes.push(("stack".into(), "prod".into()));
    let a = t
        .agent(FakeHost::new("pl", 4096, 4096), FakeMode::AutoRun)
        .await;
    let b = t.agent(zone_b, FakeMode::AutoRun).await;
    c.register_task_definition()
        .family("pl")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap();
    let only_prod = c
        .run_task()
        .cluster("pl")
        .task_definition("pl")
        .count(3)
        .placement_constraints(
            aws_sdk_ecs::types::PlacementConstraint::builder()
                .r#type(aws_sdk_ecs::types::PlacementConstraintType::MemberOf)
                .expression("attribute:stack == prod")
                .build(),
        )
        .send()
        .await
        .unwrap();
    for task in only_prod.tasks.unwrap() {
        assert_eq!(
            task.container_instance_arn.as_deref(),
            Some(b.container_instance_arn.as_str())
        );
    }
    let spread = c
        .run_task()
        .cluster("pl")
        .task_definition("pl")
        .group("spread-me")
        .count(4)
        .placement_strategy(
            aws_sdk_ecs::types::PlacementStrategy::builder()
                .r#type(aws_sdk_ecs::types::PlacementStrategyType::Spread)
                .field("attribute:ecs.availability-zone")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let on_a = spread
        .tasks
        .unwrap()
        .iter()
        .filter(|t| t.container_instance_arn.as_deref() == Some(a.container_instance_arn.as_str()))
        .count();
    assert_eq!(on_a, 2, "spread by zone puts two tasks in each zone");
    let distinct = c
        .run_task()
        .cluster("pl")
        .task_definition("pl")
        .group("one-each")
        .count(3)
        .placement_constraints(
            aws_sdk_ecs::types::PlacementConstraint::builder()
                .r#type(aws_sdk_ecs::types::PlacementConstraintType::DistinctInstance)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(distinct.tasks.unwrap().len(), 2);
    assert!(
        distinct
            .failures
            .unwrap()
            .iter()
            .all(|f| f.reason.as_deref()
                == Some("DistinctInstance placement constraint unsatisfied."))
    );
    let error = c
        .run_task()
        .cluster("pl")
        .task_definition("pl")
        .placement_constraints(
            aws_sdk_ecs::types::PlacementConstraint::builder()
                .r#type(aws_sdk_ecs::types::PlacementConstraintType::MemberOf)
                .expression("attribute:stack =")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameterException");
    assert!(message(&error).contains("position"), "{}", message(&error));
}

#[tokio::test]
async fn concurrent_run_tasks_never_oversubscribe_a_host() {
    let t = start().await;
    let c = &t.client;
    t.cluster("cc").await;
    let _hosts = [
        t.agent(FakeHost::new("cc", 1024, 1024), FakeMode::Manual)
            .await,
        t.agent(FakeHost::new("cc", 1024, 1024), FakeMode::Manual)
            .await,
    ];
    register_app(c, "cc", 128, 128).await;
    // 2 hosts x 8 slots = 16 slots; 40 concurrent requests for one task each.
    let calls: Vec<RunTaskCall> = (0..40)
        .map(|_| spawn_run_task(c, "cc", "cc", 1, None))
        .collect();
    let mut placed = 0;
    for call in calls {
        placed += call.await.unwrap().unwrap().tasks.unwrap().len();
    }
    assert_eq!(placed, 16, "exactly the capacity is placed, never more");
    let instances = c
        .list_container_instances()
        .cluster("cc")
        .send()
        .await
        .unwrap()
        .container_instance_arns
        .unwrap();
    let described = c
        .describe_container_instances()
        .cluster("cc")
        .set_container_instances(Some(instances))
        .send()
        .await
        .unwrap();
    for instance in described.container_instances.unwrap() {
        let remaining = instance.remaining_resources.unwrap();
        let cpu = remaining
            .iter()
            .find(|r| r.name.as_deref() == Some("CPU"))
            .unwrap()
            .integer_value;
        let memory = remaining
            .iter()
            .find(|r| r.name.as_deref() == Some("MEMORY"))
            .unwrap()
            .integer_value;
        assert_eq!((cpu, memory), (0, 0));
        assert_eq!(instance.pending_tasks_count, 8);
    }
}

/// More tasks queue at once than one transaction may write: the applier splits them into
/// batches (and pipelines those), and every task lands with the hosts' books exact, even
/// while another writer keeps changing the host records under the batches in flight.
#[tokio::test]
async fn a_burst_of_run_tasks_of_ten_is_placed_in_several_batches() {
    /// `calls` concurrent RunTasks of 10 on cluster "burst"; every one must place all 10.
    async fn burst_of_ten(c: &aws_sdk_ecs::Client, calls: usize) -> usize {
        let mut running = Vec::new();
        for _ in 0..calls {
            let c = c.clone();
            running.push(tokio::spawn(async move {
                c.run_task()
                    .cluster("burst")
                    .task_definition("burst")
                    .count(10)
                    .send()
                    .await
            }));
        }
        all_placed(running).await
    }

    let t = common::start_with_slow_commits().await;
    let c = &t.client;
    t.cluster("burst").await;
    let mut hosts = Vec::new();
    for _ in 0..4 {
        hosts.push(
            t.agent(FakeHost::new("burst", 65536, 65536), FakeMode::Manual)
                .await,
        );
    }
    register_app(c, "burst", 64, 64).await;
    let instance_arns = c
        .list_container_instances()
        .cluster("burst")
        .send()
        .await
        .unwrap()
        .container_instance_arns
        .unwrap();
    // 4 hosts x 1024 slots. First 192 concurrent calls of 10 with nothing else writing: the
    // pipeline fills (the store answers late, so its watch reaches the cache before the
    // applier writes through), and not one batch may conflict.
    let placed = burst_of_ten(c, 192).await;
    assert_eq!(placed, 1920);
    let (committed, conflicted) = t.placement_batches().await;
    assert!(committed >= 8.0);
    assert_eq!(conflicted, 0.0);

    // Then 192 more while another writer keeps changing every host record, so batches in
    // flight conflict and the ones decided on top of them are decided again.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for arn in &instance_arns {
        let c = c.clone();
        let stop = stop.clone();
        let arn = arn.clone();
        writers.push(tokio::spawn(async move {
            let mut round = 0;
            while !stop.is_cancelled() {
                round += 1;
                c.put_attributes()
                    .cluster("burst")
                    .attributes(
                        aws_sdk_ecs::types::Attribute::builder()
                            .name("round")
                            .value(round.to_string())
                            .target_type(aws_sdk_ecs::types::TargetType::ContainerInstance)
                            .target_id(&arn)
                            .build()
                            .unwrap(),
                    )
                    .send()
                    .await
                    .unwrap();
            }
            round
        }));
    }
    let placed = placed + burst_of_ten(c, 192).await;
    stop.cancel();
    for writer in writers {
        assert!(writer.await.unwrap() > 0);
    }
    assert_eq!(placed, 3840);
    let described = c
        .describe_container_instances()
        .cluster("burst")
        .set_container_instances(Some(instance_arns))
        .send()
        .await
        .unwrap();
    let mut pending = 0;
    for instance in described.container_instances.unwrap() {
        let remaining = instance.remaining_resources.unwrap();
        let cpu = remaining
            .iter()
            .find(|r| r.name.as_deref() == Some("CPU"))
            .unwrap()
            .integer_value;
        let count = instance.pending_tasks_count;
        assert_eq!(cpu, 65536 - 64 * count, "a host's books match its tasks");
        pending += count;
    }
    assert_eq!(pending, 3840);
}

/// Calls that repeat one clientToken and reach the plan applier together (an SDK's retry
/// racing its first try) place the tasks once, and every one of them gets those tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_client_token_place_once() {
    let t = common::start_with_slow_commits().await;
    let c = &t.client;
    t.cluster("tok").await;
    t.agent(FakeHost::new("tok", 4096, 4096), FakeMode::Manual)
        .await;
    register_app(c, "tok", 16, 16).await;
    // Calls without a token first, a batch each, so the applier's pipeline is full of
    // (slow) commits while the repeats queue, and they are decided together in one batch.
    let mut fillers = Vec::new();
    for _ in 0..6 {
        fillers.push(spawn_run_task(c, "tok", "tok", 1, None));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let calls: Vec<RunTaskCall> = (0..8)
        .map(|_| spawn_run_task(c, "tok", "tok", 2, Some("same")))
        .collect();
    let mut answers = std::collections::BTreeSet::new();
    for call in calls {
        let output = call.await.unwrap().unwrap();
        let mut arns: Vec<String> = output
            .tasks()
            .iter()
            .filter_map(|t| t.task_arn.clone())
            .collect();
        arns.sort();
        answers.insert(arns);
    }
    assert_eq!(
        answers.len(),
        1,
        "every call got the same tasks: {answers:?}"
    );
    assert_eq!(answers.first().unwrap().len(), 2);
    assert_eq!(all_placed(fillers).await, 6);
    let listed = c.list_tasks().cluster("tok").send().await.unwrap();
    assert_eq!(
        listed.task_arns.unwrap().len(),
        8,
        "the repeats placed once"
    );
}

/// Batches in flight write hosts the batches after them leave alone. When the store's watch
/// brings such a write to the cache before the applier writes it through, the applier's
/// index must still learn the host's new revision from the landing, or that host's next
/// placement conflicts. On a store that answers late (so the watch always comes first),
/// a burst spread over many hosts commits without a single conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_do_not_conflict_with_their_own_writes() {
    let t = common::start_with_slow_commits().await;
    let c = &t.client;
    t.cluster("many").await;
    for i in 0..200 {
        c.register_container_instance()
            .cluster("many")
            .instance_identity_document(format!(r#"{{"instanceId": "i-{i:017x}"}}"#))
            .total_resources(
                aws_sdk_ecs::types::Resource::builder()
                    .name("CPU")
                    .r#type("INTEGER")
                    .integer_value(4096)
                    .build(),
            )
            .total_resources(
                aws_sdk_ecs::types::Resource::builder()
                    .name("MEMORY")
                    .r#type("INTEGER")
                    .integer_value(8192)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    register_app(c, "many", 16, 16).await;
    let mut calls = Vec::new();
    for i in 0..128 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            c.run_task()
                .cluster("many")
                .task_definition("many")
                .group(format!("g{}", i % 4))
                .count(2)
                .placement_strategy(
                    aws_sdk_ecs::types::PlacementStrategy::builder()
                        .r#type(aws_sdk_ecs::types::PlacementStrategyType::Spread)
                        .field("instanceId")
                        .build(),
                )
                .send()
                .await
        }));
    }
    assert_eq!(all_placed(calls).await, 256);
    let (committed, conflicted) = t.placement_batches().await;
    assert!(committed >= 4.0);
    assert_eq!(conflicted, 0.0);
}

#[tokio::test]
async fn explain_placement_says_why_host_by_host() {
    let t = start().await;
    let c = &t.client;
    t.cluster("ex").await;
    let small = t
        .agent(FakeHost::new("ex", 256, 256), FakeMode::AutoRun)
        .await;
    let mut prod = FakeHost::new("ex", 4096, 4096);
    prod.attributes.push(("stack".into(), "prod".into()));
    let big = t.agent(prod, FakeMode::AutoRun).await;
    c.register_task_definition()
        .family("ex")
        .container_definitions(container("app", 512))
        .send()
        .await
        .unwrap();
    let client = flotilla_agent::ServerClient::new(&t.endpoint, flotilla_testkit::test_identity());
    let answer: serde_json::Value = client
        .call(
            "FlotillaV1.ExplainPlacement",
            &serde_json::json!({"cluster": "ex", "taskDefinition": "ex"}),
        )
        .await
        .unwrap();
    let verdict = |arn: &str| {
        answer["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["containerInstanceArn"] == arn)
            .unwrap()
            .clone()
    };
    assert_eq!(
        verdict(&small.container_instance_arn)["reason"],
        "RESOURCE:MEMORY"
    );
    assert_eq!(verdict(&big.container_instance_arn)["fits"], true);
    assert_eq!(answer["chosen"], big.container_instance_arn.as_str());
    let answer: serde_json::Value = client
        .call(
            "FlotillaV1.ExplainPlacement",
            &serde_json::json!({"cluster": "ex", "taskDefinition": "ex", "placementConstraints": [{"type": "memberOf", "expression": "attribute:stack == dev"}]}),
        )
        .await
        .unwrap();
    assert!(answer["chosen"].is_null());
    assert!(
        answer["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["reason"] == "MemberOf placement constraint unsatisfied.")
    );
    // Nothing was placed.
    assert!(
        c.list_tasks()
            .cluster("ex")
            .send()
            .await
            .unwrap()
            .task_arns
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn stopped_tasks_and_client_tokens_are_forgotten_after_their_retention() {
    let t = start_with(|config| {
        config.engine.stopped_task_retention_ms = 0;
        config.engine.client_token_retention_ms = 0;
    })
    .await;
    let c = &t.client;
    t.cluster("jan").await;
    let _agent = t
        .agent(FakeHost::new("jan", 1024, 1024), FakeMode::AutoRun)
        .await;
    c.register_task_definition()
        .family("jan")
        .container_definitions(container("app", 64))
        .send()
        .await
        .unwrap();
    let run = c
        .run_task()
        .cluster("jan")
        .task_definition("jan")
        .client_token("once")
        .send()
        .await
        .unwrap();
    let arn = run.tasks.unwrap()[0].task_arn.clone().unwrap();
    c.stop_task()
        .cluster("jan")
        .task(&arn)
        .send()
        .await
        .unwrap();
    eventually("task stops", || async {
        let d = c
            .describe_tasks()
            .cluster("jan")
            .tasks(&arn)
            .send()
            .await
            .unwrap();
        d.tasks.unwrap()[0].last_status.as_deref() == Some("STOPPED")
    })
    .await;
    let later = flotilla_model::Timestamp::from_millis(i64::MAX / 2);
    let forgotten = flotilla_server::janitor::sweep(&t.server.engine, later)
        .await
        .unwrap();
    assert_eq!(forgotten, 2, "the stopped task and the expired token");
    let d = c
        .describe_tasks()
        .cluster("jan")
        .tasks(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(d.failures.unwrap()[0].reason.as_deref(), Some("MISSING"));
    // The token is gone too: the same token starts a new task.
    let again = c
        .run_task()
        .cluster("jan")
        .task_definition("jan")
        .client_token("once")
        .send()
        .await
        .unwrap();
    assert_ne!(
        again.tasks.unwrap()[0].task_arn.as_deref(),
        Some(arn.as_str())
    );
}
