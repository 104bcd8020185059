//! What a registry's manifest endpoint serves: an image index (OCI) or
//! manifest list (Docker), or an image manifest, in either schema-2 family.

use serde::Deserialize;

use crate::oci::OciError;
use crate::oci::layout::Descriptor;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What the manifest requests accept, in order of preference.
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// A parsed manifest document.
#[derive(Debug)]
pub enum Fetched {
    /// An index: its entries, each naming a manifest (with a platform).
    Index(Vec<Descriptor>),
    /// An image: its config and its layers, bottom first.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

fn refuse(what: &str, reason: impl Into<String>) -> OciError {
    OciError::Registry {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a manifest document; `what` names it in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Fetched, OciError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| {
        refuse(
            what,
            format!("the manifest is not valid JSON of a manifest: {e}"),
        )
    })?;
    if raw.schema_version == Some(1) {
        return Err(refuse(
            what,
            "it is a Docker schema 1 manifest, which is obsolete and not supported \
             (copy the image with a current tool to convert it)",
        ));
    }
    if let Some(mt) = raw.media_type.as_deref()
        && !ACCEPTED.contains(&mt)
    {
        return Err(refuse(
            what,
            format!("its media type {mt:?} is not an image manifest or index"),
        ));
    }
    match (raw.manifests, raw.config) {
        (Some(list), None) => Ok(Fetched::Index(list)),
        (None, Some(config)) => {
            if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str())
            {
                return Err(refuse(
                    what,
                    format!(
                        "it is not a container image: its config has media type {:?}",
                        config.media_type
                    ),
                ));
            }
            Ok(Fetched::Image {
                config,
                layers: raw.layers.unwrap_or_default(),
            })
        }
        _ => Err(refuse(
            what,
            "it is neither an image manifest (config and layers) nor an index (manifests)",
        )),
    }
}

/// Whether an index entry names another index.
pub fn is_index(desc: &Descriptor) -> bool {
    desc.media_type == OCI_INDEX || desc.media_type == DOCKER_LIST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_refusals() {
        let d = format!("sha256:{}", "a".repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{d}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let Fetched::Index(list) = parse(index.as_bytes(), "x").unwrap() else {
            panic!()
        };
        assert_eq!(
            list[0].platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
        // OCI manifests may leave out mediaType.
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(image.as_bytes(), "x").unwrap(),
            Fetched::Image { .. }
        ));
        let artifact = image.replace(
            "application/vnd.oci.image.config.v1+json",
            "application/x-helm",
        );
        let err = parse(artifact.as_bytes(), "x").unwrap_err().to_string();
        assert!(err.contains("not a container image"), "{err}");
        let err = parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, "x").unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(parse(b"[1,2]", "x").is_err());
        assert!(parse(br#"{"schemaVersion":2}"#, "x").is_err());
    }
}
