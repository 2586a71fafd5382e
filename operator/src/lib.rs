//! The Ironpool controller manager: decides the lifecycle of Machines, allocates them to
//! Deployments, allocates addresses from Subnets. Its binary leads through a Lease
//! (`ironpool_runtime::leader`).

pub mod blocker;
pub mod capi;
pub mod config;
pub mod context;
pub mod deployment_controller;
pub mod deployment_status;
pub mod error;
pub mod inventory;
pub mod ipam;
pub mod lifecycle;
pub mod machine_controller;
pub mod machine_status;
pub mod merge_patch;
pub mod metrics;
pub mod restore;
pub mod selection;
pub mod streams;
pub mod subnet_controller;
pub mod web;
