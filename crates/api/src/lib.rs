//! The AWS wire formats: awsJson 1.1 action parsing, SigV4 verification, error shapes and
//! the rendering of domain records into ECS's response shapes. No other crate knows them.

pub mod action;
pub mod ecr;
pub mod error;
pub mod requests;
pub mod responses;
pub mod sigv4;

pub use action::{Action, ECS_TARGET_PREFIX};
pub use error::ApiError;

/// The largest request body accepted (AWS's JSON APIs refuse bodies this large too).
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
