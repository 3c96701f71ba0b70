//! What `keelctl --host` says to a host's remote API (keel-remote) over
//! TLS with client certificates: one JSON line naming the local API and
//! its request; the answer is that API's own answer, line for line, or
//! one line of the API's error shape when keel-remote refuses. Which
//! role a request needs is decided here, in one place, for the server
//! that enforces it and the docs that list it.

use serde::{Deserialize, Serialize};

use keel_formats::pki::Role;

use crate::init::{Request, Response};
use crate::pull::PullEvent;
use crate::update::{UpdateRequest, UpdateResponse};

pub use keel_formats::pki::REMOTE_PORT as PORT;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteRequest {
    /// To keel-init's API.
    Init(Request),
    /// To keel-update's.
    Update(UpdateRequest),
}

/// Why a request cannot go over the network at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRemote {
    #[error("`exec` passes the caller's terminal to the command, which a network connection cannot carry: use `ssh` to the host, then `keelctl exec`")]
    Exec,
    #[error("`update apply` passes a local file; over the network, publish the bundle in a repository and use `update check`")]
    ApplyFd,
}

impl RemoteRequest {
    /// The least role that may make this request.
    pub fn needs(&self) -> Result<Role, NotRemote> {
        match self {
            RemoteRequest::Init(r) => match r {
                Request::Status
                | Request::Logs { .. }
                | Request::ValidateConfig { .. }
                | Request::ImageList
                | Request::Network => Ok(Role::ReadOnly),
                Request::Exec { .. } => Err(NotRemote::Exec),
                Request::Start { .. }
                | Request::Stop { .. }
                | Request::Restart { .. }
                | Request::Kill { .. }
                | Request::ApplyConfig { .. }
                | Request::ConfirmConfig
                | Request::ImagePull { .. }
                | Request::ImageRm { .. }
                | Request::ImagePrune
                | Request::Poweroff
                | Request::Reboot => Ok(Role::Admin),
            },
            RemoteRequest::Update(r) => match r {
                UpdateRequest::Status => Ok(Role::ReadOnly),
                UpdateRequest::ApplyFd => Err(NotRemote::ApplyFd),
                UpdateRequest::Check | UpdateRequest::Rollback => Ok(Role::Admin),
            },
        }
    }

    /// keel-init answers image requests with event lines as they happen
    /// (a pull's progress, then the outcome); every other request, of
    /// either API, with one line.
    pub fn answers_with_events(&self) -> bool {
        matches!(
            self,
            RemoteRequest::Init(
                Request::ImagePull { .. }
                    | Request::ImageList
                    | Request::ImageRm { .. }
                    | Request::ImagePrune
            )
        )
    }

    /// A refusal, as one answer line in the shape of the API the request
    /// was for, so that a client reads every answer one way.
    pub fn refusal(&self, why: &str) -> Vec<u8> {
        let line = match self {
            _ if self.answers_with_events() => serde_json::to_vec(&PullEvent::Failed {
                message: why.to_string(),
            }),
            RemoteRequest::Init(_) => serde_json::to_vec(&Response::Error(why.to_string())),
            RemoteRequest::Update(_) => serde_json::to_vec(&UpdateResponse::Error(why.to_string())),
        };
        let mut line = line.unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Whether `have` may do what needs `need`.
pub fn allows(have: Role, need: Role) -> bool {
    match need {
        Role::ReadOnly => true,
        Role::Admin => have == Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_only_and_changes_need_admin() {
        let status = RemoteRequest::Init(Request::Status);
        assert_eq!(status.needs(), Ok(Role::ReadOnly));
        let reboot = RemoteRequest::Init(Request::Reboot);
        assert_eq!(reboot.needs(), Ok(Role::Admin));
        assert!(allows(Role::ReadOnly, Role::ReadOnly));
        assert!(!allows(Role::ReadOnly, Role::Admin));
        assert!(allows(Role::Admin, Role::Admin));
        assert_eq!(
            RemoteRequest::Update(UpdateRequest::Check).needs(),
            Ok(Role::Admin)
        );
        assert_eq!(
            RemoteRequest::Update(UpdateRequest::Status).needs(),
            Ok(Role::ReadOnly)
        );
    }

    #[test]
    fn requests_that_carry_fds_are_not_remote() {
        let exec = RemoteRequest::Init(Request::Exec {
            name: "web".into(),
            argv: vec!["/bin/sh".into()],
        });
        assert_eq!(exec.needs(), Err(NotRemote::Exec));
        assert_eq!(
            RemoteRequest::Update(UpdateRequest::ApplyFd).needs(),
            Err(NotRemote::ApplyFd)
        );
    }

    #[test]
    fn the_wire_form_names_the_api_and_refusals_parse_as_its_answers() {
        let r = RemoteRequest::Init(Request::Stop { name: "web".into() });
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"init":{"cmd":"stop","name":"web"}}"#);
        assert_eq!(serde_json::from_str::<RemoteRequest>(&line).unwrap(), r);
        assert!(serde_json::from_str::<RemoteRequest>(r#"{"shell":{}}"#).is_err());
        let refused = r.refusal("no");
        let back: Response = serde_json::from_slice(&refused).unwrap();
        assert_eq!(back, Response::Error("no".into()));
        let i = RemoteRequest::Init(Request::ImageList).refusal("no");
        let back: PullEvent = serde_json::from_slice(&i).unwrap();
        assert_eq!(
            back,
            PullEvent::Failed {
                message: "no".into()
            }
        );
        let u = RemoteRequest::Update(UpdateRequest::Check).refusal("no");
        let back: UpdateResponse = serde_json::from_slice(&u).unwrap();
        assert_eq!(back, UpdateResponse::Error("no".into()));
    }
}
