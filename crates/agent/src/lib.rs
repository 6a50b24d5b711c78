//! The host agent: registers its host as a container instance, polls the control plane for
//! the tasks it must run, runs them through a runtime and reports what happens.

pub mod client;

pub use client::{ClientError, ServerClient, SigningIdentity};
