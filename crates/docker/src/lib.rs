//! flotilla-docker
