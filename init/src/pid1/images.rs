//! `keelctl image` and the image store's collection. The store is
//! keel-pull's; PID 1 decides what is asked of it (a pull with the host
//! config's credentials, which keelctl never sees; a removal only of an
//! image no container uses) and hands the connection to a helper process
//! (`keel-init image-call`) that relays keel-pull's events to keelctl, so
//! that a pull of minutes never holds up PID 1's loop.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use keel_api::init::Request;
use keel_api::pull::{
    hosts_for, PullEvent, PullRequest, PullerRequest, PULL_DIR_ON_HOST, STORE_NAME,
};
use keel_formats::hostconfig::types::Pull;
use keel_formats::hostconfig::values::ImageSource;
use keel_formats::hostconfig::HostConfig;
use keel_formats::reference::Reference;

use super::Init;
use crate::log;

/// keel-init itself, for its helper processes.
const SELF: &str = "/proc/self/exe";

/// The references in full of the registry images the containers of
/// `configs` use (the config in force, and the one a trial goes back to):
/// what the store keeps.
pub(super) fn in_use(configs: &[&HostConfig]) -> Vec<String> {
    let mut used: Vec<String> = configs
        .iter()
        .flat_map(|c| c.containers.values())
        .filter_map(|uc| match &uc.image {
            ImageSource::Registry(r) => Some(r.to_string()),
            ImageSource::Path(_) => None,
        })
        .collect();
    used.sort();
    used.dedup();
    used
}

/// What keel-pull is asked for an image request of keelctl, or why it is
/// refused. `configs`: the config in force first, then the one a trial
/// would go back to.
pub(super) fn puller_request(
    req: &Request,
    configs: &[&HostConfig],
) -> Result<PullerRequest, String> {
    let parse = |text: &str| {
        text.parse::<Reference>().map_err(|e| {
            // The reference is the client's: shown short, so the answer
            // is small whatever was sent.
            let shown: String = text.chars().take(200).collect();
            format!("{shown:?}: {e}")
        })
    };
    let config = configs.first().copied().ok_or("no host config")?;
    match req {
        Request::ImagePull { reference } => {
            let r = parse(reference)?;
            Ok(PullerRequest::Pull(PullRequest {
                reference: r.to_string(),
                // As `docker pull`: the registry says what the tag is now.
                policy: Pull::Always,
                hosts: hosts_for(&r, &config.registries),
            }))
        }
        Request::ImageList => Ok(PullerRequest::List {}),
        Request::ImageRm { reference } => {
            let r = parse(reference)?;
            let users: Vec<&str> = configs
                .iter()
                .flat_map(|c| c.containers.iter())
                .filter(|(_, uc)| matches!(&uc.image, ImageSource::Registry(u) if *u == r))
                .map(|(name, _)| name.as_str())
                .collect();
            if let Some(first) = users.first() {
                return Err(format!(
                    "{r} is the image of containers.{first}{}: remove it from the host config first",
                    if users.len() > 1 { " (and others)" } else { "" }
                ));
            }
            Ok(PullerRequest::Remove {
                reference: r.to_string(),
            })
        }
        Request::ImagePrune => Ok(PullerRequest::Prune {
            keep: in_use(configs),
            budget: None,
        }),
        other => Err(format!("{other:?} is not an image request")),
    }
}

/// Start `keel-init image-call` on `req`, with `out` as its stdout.
fn call(req: &PullerRequest, out: Stdio) -> Result<(), String> {
    let text = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    // One request line to keel-pull, and a write to an empty pipe that
    // never waits: both hold this much.
    if text.len() >= keel_api::wire::MAX_REQUEST {
        return Err(format!(
            "the request to keel-pull would be {} bytes; at most {} fit (a host config with fewer registry images)",
            text.len(),
            keel_api::wire::MAX_REQUEST
        ));
    }
    let mut child = Command::new(SELF)
        .arg("image-call")
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .map_err(|e| format!("starting the image helper: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Far below a pipe's buffer (the host config bounds it): this does
        // not wait on the helper. Dropping stdin ends the request.
        stdin
            .write_all(&text)
            .map_err(|e| format!("the image helper: {e}"))?;
    }
    // Reaped by PID 1's loop like any other child.
    drop(child);
    Ok(())
}

impl Init {
    /// Answer an image request of keelctl: through the helper, or with the
    /// reason it is refused.
    pub(super) fn image(&mut self, stream: UnixStream, req: &Request) {
        let asked = puller_request(req, &self.configs());
        if matches!(req, Request::ImagePrune) {
            if self.cfg.preparing.is_empty() {
                self.prune_roots();
            } else {
                // A root being unpacked is no service's yet: pruned once
                // the preparations are done.
                self.cfg.prune_pending = true;
            }
        }
        let failed = match asked {
            Ok(ask) => match stream.try_clone() {
                Ok(copy) => call(&ask, Stdio::from(OwnedFd::from(copy))).err(),
                Err(e) => Some(format!("the connection: {e}")),
            },
            Err(e) => Some(e),
        };
        if let Some(message) = failed {
            let _ = keel_api::wire::send_line(&stream, &PullEvent::Failed { message }, &[]);
        }
    }

    /// Keep the image store within its budget: images no container uses
    /// go, least recently pulled first. Nothing to do before a first pull.
    pub(super) fn collect_images(&mut self) {
        if !Path::new(PULL_DIR_ON_HOST).join(STORE_NAME).exists() {
            return;
        }
        let ask = PullerRequest::Prune {
            keep: in_use(&self.configs()),
            budget: Some(self.cfg.config.images.budget.0),
        };
        if let Err(e) = call(&ask, Stdio::null()) {
            log(format!("warning: collecting the image store: {e}"));
        }
    }

    /// The config in force, and the one a trial goes back to: the images
    /// either needs are kept.
    fn configs(&self) -> Vec<&HostConfig> {
        let mut c = vec![&self.cfg.config];
        c.extend(self.cfg.trial.as_ref().map(|t| &t.previous));
        c
    }

    /// Remove the unpacked roots no service runs on.
    pub(super) fn prune_roots(&mut self) {
        if !Path::new(crate::containers::ROOTS_DIR).exists() {
            return;
        }
        let keep: Vec<String> = self
            .sup
            .services()
            .iter()
            .filter_map(|s| s.def.root_dir.clone())
            .collect();
        if let Err(e) = Command::new(SELF).arg("prune-roots").args(keep).spawn() {
            log(format!("warning: pruning unpacked roots: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(text: &str) -> HostConfig {
        toml::from_str(text).unwrap()
    }

    const TWO: &str = "[containers.web]\nimage = \"nginx\"\n\
                       [containers.api]\nimage = \"r.example/api:1\"\n\
                       [containers.local]\nimage = \"/var/img\"\n\
                       [registries.\"r.example\"]\nusername = \"u\"\npassword = \"p\"\n";

    #[test]
    fn a_pull_carries_the_registrys_settings_and_always_asks_it() {
        let c = config(TWO);
        let req = Request::ImagePull {
            reference: "r.example/api:2".into(),
        };
        let PullerRequest::Pull(p) = puller_request(&req, &[&c]).unwrap() else {
            panic!()
        };
        assert_eq!(p.reference, "r.example/api:2");
        assert_eq!(p.policy, Pull::Always);
        assert_eq!(p.hosts.len(), 1);
        assert_eq!(p.hosts[0].username.as_deref(), Some("u"));
        let bad = Request::ImagePull {
            reference: "Bad/Ref".into(),
        };
        assert!(puller_request(&bad, &[&c])
            .unwrap_err()
            .starts_with("\"Bad/Ref\": "));
        let huge = Request::ImagePull {
            reference: "x".repeat(60_000),
        };
        assert!(puller_request(&huge, &[&c]).unwrap_err().len() < 1000);
    }

    #[test]
    fn an_image_in_use_is_not_removed_and_prune_keeps_the_ones_in_use() {
        let c = config(TWO);
        let rm = |r: &str| {
            puller_request(
                &Request::ImageRm {
                    reference: r.into(),
                },
                &[&c],
            )
        };
        // Named as Docker names it, matched in full.
        let e = rm("docker.io/library/nginx:latest").unwrap_err();
        assert!(e.contains("containers.web"), "{e}");
        assert_eq!(
            rm("r.example/api:2").unwrap(),
            PullerRequest::Remove {
                reference: "r.example/api:2".into()
            }
        );
        assert_eq!(
            puller_request(&Request::ImagePrune, &[&c]).unwrap(),
            PullerRequest::Prune {
                keep: vec![
                    "docker.io/library/nginx:latest".into(),
                    "r.example/api:1".into()
                ],
                budget: None
            }
        );
        assert!(puller_request(&Request::Status, &[&c]).is_err());
        // On trial: what the config it goes back to uses is kept too.
        let before = config("[containers.old]\nimage = \"r.example/old:1\"\n");
        let e = puller_request(
            &Request::ImageRm {
                reference: "r.example/old:1".into(),
            },
            &[&c, &before],
        )
        .unwrap_err();
        assert!(e.contains("containers.old"), "{e}");
        let PullerRequest::Prune { keep, .. } =
            puller_request(&Request::ImagePrune, &[&c, &before]).unwrap()
        else {
            panic!()
        };
        assert!(keep.contains(&"r.example/old:1".to_string()), "{keep:?}");
    }
}
