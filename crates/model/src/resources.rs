//! Host resources: CPU units, memory, host ports and GPUs, and the arithmetic of reserving them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A bundle of resources. On a container instance, `registered` holds its capacity and
/// `remaining` what is left; ports are listed as *taken* in both (ECS reports them that way),
/// GPUs as the *available* ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: i64,
    pub memory_mib: i64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ports_tcp: BTreeSet<u16>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ports_udp: BTreeSet<u16>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub gpu_ids: BTreeSet<String>,
}

/// What one task asks of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    pub cpu: i64,
    pub memory_mib: i64,
    pub ports_tcp: BTreeSet<u16>,
    pub ports_udp: BTreeSet<u16>,
    pub gpus: u32,
}

/// The first resource that does not fit, named as ECS names it in `failures[].reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shortfall {
    Cpu,
    Memory,
    Ports,
    Gpu,
}

impl Shortfall {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Cpu => "RESOURCE:CPU",
            Self::Memory => "RESOURCE:MEMORY",
            Self::Ports => "RESOURCE:PORTS",
            Self::Gpu => "RESOURCE:GPU",
        }
    }
}

/// What was taken from a host for one task, so it can be given back exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub cpu: i64,
    pub memory_mib: i64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ports_tcp: BTreeSet<u16>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ports_udp: BTreeSet<u16>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub gpu_ids: BTreeSet<String>,
}

impl Resources {
    /// Checks fit in ECS's order: CPU, memory, ports, GPU.
    pub fn check(&self, demand: &Demand) -> Result<(), Shortfall> {
        if demand.cpu > self.cpu {
            return Err(Shortfall::Cpu);
        }
        if demand.memory_mib > self.memory_mib {
            return Err(Shortfall::Memory);
        }
        if !self.ports_tcp.is_disjoint(&demand.ports_tcp)
            || !self.ports_udp.is_disjoint(&demand.ports_udp)
        {
            return Err(Shortfall::Ports);
        }
        if demand.gpus as usize > self.gpu_ids.len() {
            return Err(Shortfall::Gpu);
        }
        Ok(())
    }

    /// Takes `demand` out of these remaining resources, choosing GPU ids in order.
    pub fn reserve(&mut self, demand: &Demand) -> Result<Reservation, Shortfall> {
        self.check(demand)?;
        self.cpu -= demand.cpu;
        self.memory_mib -= demand.memory_mib;
        self.ports_tcp.extend(demand.ports_tcp.iter().copied());
        self.ports_udp.extend(demand.ports_udp.iter().copied());
        let gpu_ids: BTreeSet<String> = self
            .gpu_ids
            .iter()
            .take(demand.gpus as usize)
            .cloned()
            .collect();
        for id in &gpu_ids {
            self.gpu_ids.remove(id);
        }
        Ok(Reservation {
            cpu: demand.cpu,
            memory_mib: demand.memory_mib,
            ports_tcp: demand.ports_tcp.clone(),
            ports_udp: demand.ports_udp.clone(),
            gpu_ids,
        })
    }

    /// Gives a reservation back. Ports the host registered as taken stay taken.
    pub fn release(&mut self, reservation: &Reservation, registered: &Resources) {
        self.cpu = (self.cpu + reservation.cpu).min(registered.cpu);
        self.memory_mib = (self.memory_mib + reservation.memory_mib).min(registered.memory_mib);
        for port in &reservation.ports_tcp {
            if !registered.ports_tcp.contains(port) {
                self.ports_tcp.remove(port);
            }
        }
        for port in &reservation.ports_udp {
            if !registered.ports_udp.contains(port) {
                self.ports_udp.remove(port);
            }
        }
        self.gpu_ids.extend(
            reservation
                .gpu_ids
                .iter()
                .filter(|id| registered.gpu_ids.contains(*id))
                .cloned(),
        );
    }

    /// Takes an existing reservation out again (used when recomputing what is left of a host
    /// from the tasks it holds). Saturates instead of going negative.
    pub fn apply(&mut self, reservation: &Reservation) {
        self.cpu -= reservation.cpu;
        self.memory_mib -= reservation.memory_mib;
        self.ports_tcp.extend(reservation.ports_tcp.iter().copied());
        self.ports_udp.extend(reservation.ports_udp.iter().copied());
        for id in &reservation.gpu_ids {
            self.gpu_ids.remove(id);
        }
    }

    /// Adds a dynamic host port to `demand`: the lowest free port in `range` not already
    /// taken here or by the demand itself.
    pub fn pick_dynamic_port(
        &self,
        demand: &Demand,
        protocol_udp: bool,
        range: std::ops::RangeInclusive<u16>,
    ) -> Option<u16> {
        let (taken, wanted) = if protocol_udp {
            (&self.ports_udp, &demand.ports_udp)
        } else {
            (&self.ports_tcp, &demand.ports_tcp)
        };
        range
            .into_iter()
            .find(|p| !taken.contains(p) && !wanted.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Resources {
        Resources {
            cpu: 2048,
            memory_mib: 4096,
            ports_tcp: [22].into(),
            ports_udp: BTreeSet::new(),
            gpu_ids: ["gpu-0".to_owned(), "gpu-1".to_owned()].into(),
        }
    }

    #[test]
    fn reserve_and_release_round_trip() {
        let registered = host();
        let mut remaining = registered.clone();
        let demand = Demand {
            cpu: 512,
            memory_mib: 1024,
            ports_tcp: [8080].into(),
            gpus: 1,
            ..Default::default()
        };
        let reservation = remaining.reserve(&demand).unwrap();
        assert_eq!(remaining.cpu, 1536);
        assert!(remaining.ports_tcp.contains(&8080));
        assert_eq!(remaining.gpu_ids.len(), 1);
        assert_eq!(remaining.check(&demand), Err(Shortfall::Ports));
        remaining.release(&reservation, &registered);
        assert_eq!(remaining, registered);
    }

    #[test]
    fn shortfalls_in_ecs_order() {
        let r = host();
        assert_eq!(
            r.check(&Demand {
                cpu: 4096,
                memory_mib: 99999,
                ..Default::default()
            }),
            Err(Shortfall::Cpu)
        );
        assert_eq!(
            r.check(&Demand {
                memory_mib: 99999,
                ..Default::default()
            }),
            Err(Shortfall::Memory)
        );
        assert_eq!(
            r.check(&Demand {
                ports_tcp: [22].into(),
                ..Default::default()
            }),
            Err(Shortfall::Ports)
        );
        assert_eq!(
            r.check(&Demand {
                gpus: 3,
                ..Default::default()
            }),
            Err(Shortfall::Gpu)
        );
    }
}
