//! Manifests and indexes are keel-formats' (keel-oci reads them from image
//! layouts too); what is left here is how to ask a registry for them.

pub use keel_formats::manifest::*;

/// The Accept header value for manifest requests (all four, OCI first).
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_header_names_all_four_oci_first() {
        let listed: Vec<&str> = ACCEPT.split(", ").collect();
        assert_eq!(
            listed,
            [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
        );
    }
}
