//! Generated code for Tollgate's gRPC services, plus the encoded file descriptor set that every
//! server registers with gRPC reflection.
#![allow(
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::doc_lazy_continuation
)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("tollgate.auth.v1");
    }
}

pub mod usage {
    pub mod v1 {
        tonic::include_proto!("tollgate.usage.v1");
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("tollgate.agent.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Tollgate service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");
