//! `FlotillaV1.ExplainPlacement`: a dry run of placement that says, host by host, whether a
//! task would fit and why not. ECS has nothing like it; users ask for it.

use flotilla_model::validate::task_demand;
use flotilla_model::{ContainerInstanceStatus, EcsError, TaskOverride};
use flotilla_protocol::{ExplainPlacementRequest, ExplainPlacementResponse, HostVerdict};
use flotilla_scheduler::PlacementRequest;

use super::{Engine, RequestContext};

impl Engine {
    pub async fn explain_placement(
        &self,
        ctx: &RequestContext,
        request: ExplainPlacementRequest,
    ) -> Result<ExplainPlacementResponse, EcsError> {
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let td = self
            .task_definition_or_error(ctx, &request.task_definition)
            .await?;
        let parse_constraint = |c: &flotilla_model::task_definition::PlacementConstraint| {
            flotilla_scheduler::parse_constraint(
                c.kind.as_deref().unwrap_or_default(),
                c.expression.as_deref(),
            )
            .map_err(|e| EcsError::invalid(e.to_string()))
        };
        let mut constraints = Vec::new();
        for constraint in request
            .placement_constraints
            .iter()
            .chain(&td.value.spec.placement_constraints)
        {
            constraints.push(parse_constraint(constraint)?);
        }
        let mut strategies = Vec::new();
        for strategy in &request.placement_strategy {
            strategies.push(
                flotilla_scheduler::parse_strategy(
                    strategy.kind.as_deref().unwrap_or_default(),
                    strategy.field.as_deref(),
                )
                .map_err(|e| EcsError::invalid(e.to_string()))?,
            );
        }
        let demand = task_demand(&td.value, &TaskOverride::default());
        let placement = PlacementRequest {
            demand: demand.clone(),
            count: 1,
            group: request
                .group
                .unwrap_or_else(|| format!("family:{}", td.value.family)),
            constraints,
            strategies,
        };
        let snapshot = self.snapshot(ctx, &cluster.value.name).await?;
        let instances = snapshot
            .instances
            .values()
            .map(|i| &i.value)
            .filter(|i| i.status != ContainerInstanceStatus::Inactive);
        let hosts = crate::placement::hosts(instances, &snapshot.host_tasks);
        let verdicts = flotilla_scheduler::explain(&hosts, &placement);
        let chosen = flotilla_scheduler::place(&hosts, &placement, 0)
            .placements
            .first()
            .map(|p| hosts[p.host_index].arn.clone());
        Ok(ExplainPlacementResponse {
            cpu: demand.cpu,
            memory: demand.memory_mib,
            hosts: verdicts
                .into_iter()
                .map(|(i, verdict)| HostVerdict {
                    container_instance_arn: hosts[i].arn.clone(),
                    ec2_instance_id: hosts[i].ec2_instance_id.clone(),
                    fits: verdict.is_ok(),
                    reason: verdict.err().map(|r| r.ecs_reason()),
                    remaining_cpu: hosts[i].remaining.cpu,
                    remaining_memory: hosts[i].remaining.memory_mib,
                })
                .collect(),
            chosen,
        })
    }
}
