//! The gRPC methods a server serves, read from the descriptors of the services it registers.
//!
//! Telemetry labels and span names come from this closed set: a request path is a string any
//! caller picks before it is authenticated, and one series or span name per random path would
//! grow `/metrics` and the trace store without bound. Every path outside the set is `unknown`.

use std::{collections::HashSet, sync::Arc};

use prost::Message as _;

/// The label of every path that no served method has.
pub const UNKNOWN: &str = "unknown";

/// The services every Tollgate gRPC server registers besides its own: health and both
/// versions of reflection.
pub fn served_services(service: &'static str) -> [&'static str; 4] {
    [
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
}

/// The encoded descriptor sets that describe every service a Tollgate server may register.
pub fn descriptor_sets() -> [&'static [u8]; 4] {
    [
        tollgate_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

/// The paths (`/package.Service/Method`) of the served methods. Cloning shares the set.
#[derive(Clone, Debug, Default)]
pub struct ServedMethods {
    paths: Arc<HashSet<Arc<str>>>,
}

impl ServedMethods {
    /// The methods of `services`, as the descriptor sets define them. A service that no set
    /// describes is an error: its calls would all be labelled `unknown`.
    pub fn of(services: &[&str]) -> anyhow::Result<Self> {
        let mut paths = HashSet::new();
        let mut described = HashSet::new();
        for encoded in descriptor_sets() {
            let set = prost_types::FileDescriptorSet::decode(encoded)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let name = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    if !services.contains(&name.as_str()) {
                        continue;
                    }
                    for method in &service.method {
                        paths.insert(Arc::from(format!("/{name}/{}", method.name())));
                    }
                    described.insert(name);
                }
            }
        }
        if let Some(missing) = services.iter().find(|name| !described.contains(**name)) {
            anyhow::bail!("no descriptor describes the gRPC service {missing}");
        }
        Ok(Self {
            paths: Arc::new(paths),
        })
    }

    /// The path as a label when a served method has it.
    pub fn label(&self, path: &str) -> Option<Arc<str>> {
        self.paths.get(path).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_methods_of_the_named_services_are_known() {
        let methods = ServedMethods::of(&served_services("tollgate.usage.v1.UsageService"))
            .expect("described services");
        for path in [
            "/tollgate.usage.v1.UsageService/Consume",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(methods.label(path).as_deref(), Some(path));
        }
        for path in [
            "/tollgate.auth.v1.AuthService/Login",
            "/tollgate.usage.v1.UsageService/Nope",
            "/tollgate.usage.v1.UsageService/Consume/",
            "/random-7f3a",
            "",
        ] {
            assert_eq!(methods.label(path), None, "{path}");
        }
    }

    #[test]
    fn an_undescribed_service_is_refused() {
        assert!(ServedMethods::of(&["tollgate.nope.v1.Nope"]).is_err());
    }
}
