//! A whole image by reference: the manifest (through the index, for the
//! host's platform), then the config and the layers, each a blob checked
//! against its digest, then the manifest, and last the name — so a name in
//! the store always names an image whose every part is there.

use crate::client::{Client, ClientError, Progress};
use crate::manifest::{self, Descriptor, Manifest, Parsed, Platform};
use crate::reference::{Digest, Reference};
use crate::store::Store;

/// Config media types of container images; anything else (a Helm chart,
/// a signature, an SBOM) is not something keel can run.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The store's name for it: the reference in full.
    pub name: String,
    /// The platform's image manifest (what the name tags).
    pub manifest: Descriptor,
    /// The index the reference named, for a multi-platform image.
    pub index: Option<Digest>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Bytes that came over the network (blobs already in count nothing).
    pub fetched: u64,
    /// The host that served it.
    pub host: String,
}

/// Pull `reference` for `platform` into `store` from the first of
/// `clients` (its mirrors in order, then the upstream) that serves it
/// whole. Blobs a failed try brought in stay: they are checked, and the
/// next host's try resumes them.
pub fn pull(
    clients: &mut [Client],
    reference: &Reference,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Pulled, ClientError> {
    let mut reasons = Vec::new();
    let count = clients.len();
    for client in clients.iter_mut() {
        match pull_from(client, reference, platform, store, progress) {
            Ok(pulled) => return Ok(pulled),
            // This host's disk: no other registry would do better.
            Err(e) if e.is_local() => return Err(e),
            Err(e) if count == 1 => return Err(e),
            Err(e) => reasons.push(format!("{}: {e}", client.host())),
        }
    }
    if reasons.is_empty() {
        return Err(ClientError::NoRegistry {
            reference: reference.to_string(),
        });
    }
    Err(ClientError::AllFailed {
        reference: reference.to_string(),
        reasons: reasons.join("; "),
    })
}

fn pull_from(
    client: &mut Client,
    reference: &Reference,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Pulled, ClientError> {
    let repo = reference.repository.as_str();
    let asked = reference.manifest_ref();
    let (body, digest, parsed) = client.manifest(repo, &asked)?;
    if let Some(pinned) = &reference.digest {
        if &digest != pinned {
            return Err(ClientError::Digest {
                url: client.manifest_url(repo, &asked),
                want: pinned.clone(),
                got: digest,
            });
        }
    }
    let (bytes, manifest_digest, manifest, index) = match parsed {
        Parsed::Manifest(m) => (body, digest, m, None),
        Parsed::Index(idx) => {
            let url = client.manifest_url(repo, &asked);
            let chosen = manifest::choose(&idx, platform)
                .map_err(|source| ClientError::Manifest { url, source })?
                .clone();
            let wanted = chosen.digest.to_string();
            let url = client.manifest_url(repo, &wanted);
            let (bytes, got, parsed) = client.manifest(repo, &wanted)?;
            if got != chosen.digest {
                return Err(ClientError::Digest {
                    url,
                    want: chosen.digest,
                    got,
                });
            }
            check_size(&url, "the manifest", chosen.size, bytes.len())?;
            let Parsed::Manifest(m) = parsed else {
                return Err(ClientError::Protocol {
                    url,
                    message: "the index names another index, not an image manifest".into(),
                });
            };
            // The index is kept too: the store then holds what the
            // reference named, as `skopeo copy` would.
            store.put(&digest, &body)?;
            (bytes, got, m, Some(digest))
        }
    };
    let url = client.manifest_url(repo, &manifest_digest.to_string());
    check_image(&manifest, &url)?;
    // What is still to come: a blob's partial download counts for what
    // it holds (a pull resumed on a nearly full disk must not be refused).
    let missing = std::iter::once(&manifest.config)
        .chain(&manifest.layers)
        .filter(|d| !store.has(&d.digest))
        .fold(0u64, |n, d| {
            n.saturating_add(d.size.saturating_sub(store.partial_size(&d.digest)))
        });
    store.check_room(missing)?;
    let mut fetched = client.blob(repo, &manifest.config, store, progress)?;
    if index.is_none() {
        // No index chose it for this host: its config says what it is for.
        let config = store.read(&manifest.config.digest, manifest::MAX_CONFIG)?;
        if let Ok(offered) = serde_json::from_slice::<Platform>(&config) {
            manifest::runs_on(&offered, platform).map_err(|source| ClientError::Manifest {
                url: url.clone(),
                source,
            })?;
        }
    }
    for layer in &manifest.layers {
        fetched = fetched.saturating_add(client.blob(repo, layer, store, progress)?);
    }
    store.put(&manifest_digest, &bytes)?;
    let descriptor = Descriptor {
        media_type: manifest.media_type.clone(),
        digest: manifest_digest,
        size: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
        platform: Some(platform.clone()),
        annotations: index.as_ref().map(|i| {
            std::iter::once((crate::store::INDEX_OF.to_string(), i.to_string())).collect()
        }),
    };
    let name = reference.to_string();
    store.tag(&name, &descriptor)?;
    Ok(Pulled {
        name,
        manifest: descriptor,
        index,
        config: manifest.config,
        layers: manifest.layers,
        fetched,
        host: client.host().to_string(),
    })
}

/// An image keel can run: a container config, layers it can unpack.
fn check_image(manifest: &Manifest, url: &str) -> Result<(), ClientError> {
    let config = &manifest.config.media_type;
    if !IMAGE_CONFIGS.contains(&config.as_str()) {
        return Err(ClientError::Protocol {
            url: url.to_string(),
            message: format!("its config is {config:?}: not a container image"),
        });
    }
    for layer in &manifest.layers {
        manifest::check_layer(layer).map_err(|source| ClientError::Manifest {
            url: url.to_string(),
            source,
        })?;
    }
    Ok(())
}

fn check_size(url: &str, what: &str, want: u64, got: usize) -> Result<(), ClientError> {
    if u64::try_from(got).ok() == Some(want) {
        return Ok(());
    }
    Err(ClientError::Protocol {
        url: url.to_string(),
        message: format!("{what} is {got} bytes where the index says {want}"),
    })
}
