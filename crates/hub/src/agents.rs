//! Appliance agents (DESIGN.md "Agents and jobs", "Identities and trust"): creation with a
//! one-time enrollment token, enrollment, and who a bearer token belongs to.
//!
//! The admin creates an agent (`POST /api/v1/agents`) and gets a random 256-bit enrollment
//! token, good for one enrollment within [`ENROLLMENT_TTL_SECONDS`]. The appliance enrolls
//! (`POST /api/v1/agents/enroll`, no bearer token) with that token and a CSR: the hub checks the
//! token in constant time against its stored SHA-256 hash, signs the CSR with its CA as a client
//! certificate for the agent's name (the key never leaves the appliance), and answers a fresh
//! random 256-bit agent token. The catalog stores only hashes of both tokens. A wrong or expired
//! token is refused (401), a used one too (409), and nothing changes then: the CSR is signed
//! only after a first check, and the token is used in the same catalog transaction that checks
//! it again.
//!
//! [`Caller`] is who a request's bearer token belongs to: the admin (`DATA/api.token`) or an
//! enrolled agent (its token looked up by hash).

use std::path::PathBuf;
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use sendense_catalog::{AgentRecord, Catalog, Enrollment};
use sendense_types::jobs::{ENROLLMENT_TTL_SECONDS, ONLINE_SECONDS};
use sendense_types::{
    Agent, AgentEnrollment, AgentList, AgentName, AgentState, CreateAgentRequest, EnrollRequest,
    EnrollResponse, JobId, JobStatus, Timestamp,
};

use crate::error::HubError;

/// Who a request's bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token (`DATA/api.token`): may do everything.
    Admin,
    /// An enrolled agent's token: the agent routes, its own jobs.
    Agent(AgentName),
}

impl Caller {
    /// Whether this caller may act for `agent` (the admin may act for every agent).
    #[must_use]
    pub fn acts_for(&self, agent: &AgentName) -> bool {
        match self {
            Self::Admin => true,
            Self::Agent(own) => own == agent,
        }
    }
}

/// The agents: creation, enrollment, authentication, state.
#[derive(Debug)]
pub struct Agents {
    catalog: Arc<Catalog>,
    tls_dir: PathBuf,
}

impl Agents {
    /// The agents of `catalog`; enrollment signs with the CA in `tls_dir` (`DATA/tls`).
    #[must_use]
    pub fn new(catalog: Arc<Catalog>, tls_dir: PathBuf) -> Self {
        Self { catalog, tls_dir }
    }

    /// Creates an agent awaiting enrollment (or gives one not yet enrolled a new token) and
    /// answers its one-time enrollment token.
    ///
    /// # Errors
    /// The agent has enrolled already (409); catalog errors.
    pub fn create(&self, req: &CreateAgentRequest) -> Result<AgentEnrollment, HubError> {
        self.create_at(req, Timestamp::now())
    }

    /// [`Agents::create`] at `now`.
    ///
    /// # Errors
    /// As [`Agents::create`].
    pub fn create_at(
        &self,
        req: &CreateAgentRequest,
        now: Timestamp,
    ) -> Result<AgentEnrollment, HubError> {
        let token = random_token();
        let expires_at = now.saturating_add_seconds(i64::from(ENROLLMENT_TTL_SECONDS));
        self.catalog
            .create_agent(&req.name, sha256_hex(token.as_bytes()), expires_at, now)?;
        tracing::info!(agent = %req.name, %expires_at, "agent created, awaiting enrollment");
        Ok(AgentEnrollment {
            name: req.name.clone(),
            enrollment_token: token,
            expires_at,
        })
    }

    /// Enrolls an agent: checks its one-time token, signs its CSR with the hub's CA, answers
    /// its new bearer token, its certificate and the CA certificate.
    ///
    /// # Errors
    /// Unknown agent or wrong token, expired token (401); used token (409); a CSR that does
    /// not parse or verify (400); no CA (500).
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, HubError> {
        self.enroll_at(req, Timestamp::now())
    }

    /// [`Agents::enroll`] at `now`.
    ///
    /// # Errors
    /// As [`Agents::enroll`].
    pub fn enroll_at(
        &self,
        req: &EnrollRequest,
        now: Timestamp,
    ) -> Result<EnrollResponse, HubError> {
        let name = req.name();
        let presented = sha256_hex(req.enrollment_token().as_bytes());
        self.catalog.check_enrollment(name, &presented, now)?;
        let ca_cert_pem = self.read_tls(sendense_nbd::tls::CA_CERT)?;
        let ca_key_pem = self.read_tls(sendense_nbd::tls::CA_KEY)?;
        let client_cert_pem = sendense_nbd::tls::sign_client_csr(
            &ca_cert_pem,
            &ca_key_pem,
            req.csr_pem(),
            name.as_str(),
        )
        .map_err(|e| match e {
            sendense_nbd::NbdError::Certificate { what, .. }
                if what.contains("signing request") =>
            {
                HubError::Csr(e)
            }
            e => HubError::TlsMaterial(e),
        })?;
        let agent_token = random_token();
        self.catalog.enroll_agent(
            name,
            Enrollment {
                enrollment_token_sha256: presented,
                agent_token_sha256: sha256_hex(agent_token.as_bytes()),
                cert_sha256: sha256_hex(client_cert_pem.as_bytes()),
            },
            now,
        )?;
        tracing::info!(agent = %name, "agent enrolled");
        Ok(EnrollResponse {
            agent_token,
            client_cert_pem,
            ca_cert_pem,
        })
    }

    /// The enrolled agent whose bearer token `token` is.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn authenticate(&self, token: &str) -> Result<Option<AgentName>, HubError> {
        Ok(self
            .catalog
            .agent_by_token(&sha256_hex(token.as_bytes()))?
            .map(|a| a.name))
    }

    /// Every agent with its state now.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn list(&self) -> Result<AgentList, HubError> {
        let now = Timestamp::now();
        let running = self.running_jobs()?;
        let agents = self
            .catalog
            .agents()?
            .iter()
            .map(|a| to_api(a, &running, now))
            .collect();
        Ok(AgentList { agents })
    }

    /// One agent with its state at `now`.
    ///
    /// # Errors
    /// Unknown agent (404); catalog errors.
    pub fn agent_at(&self, name: &AgentName, now: Timestamp) -> Result<Agent, HubError> {
        let record = self.catalog.agent(name)?.ok_or_else(|| {
            sendense_catalog::CatalogError::AgentNotFound {
                agent: name.clone(),
            }
        })?;
        Ok(to_api(&record, &self.running_jobs()?, now))
    }

    /// One agent with its state now.
    ///
    /// # Errors
    /// As [`Agents::agent_at`].
    pub fn agent(&self, name: &AgentName) -> Result<Agent, HubError> {
        self.agent_at(name, Timestamp::now())
    }

    /// Deletes an agent that no queued or running job and no credential names: its token
    /// stops working at once (it can no longer ask for work or report). Answers what it was.
    ///
    /// # Errors
    /// [`HubError::InUse`] naming the jobs or credentials; unknown agent (404); catalog errors.
    pub fn delete(&self, name: &AgentName) -> Result<Agent, HubError> {
        let agent = self.agent(name)?;
        let jobs: Vec<String> = self
            .catalog
            .jobs(&sendense_types::JobQuery::default())?
            .iter()
            .filter(|j| j.status.is_active() && j.agent.as_ref() == Some(name))
            .map(|j| j.job_id.to_string())
            .collect();
        let credentials: Vec<String> = self
            .catalog
            .credentials()?
            .iter()
            .filter(|c| c.agent.as_ref() == Some(name))
            .map(|c| c.name.to_string())
            .collect();
        if !jobs.is_empty() || !credentials.is_empty() {
            let mut by = Vec::new();
            if !jobs.is_empty() {
                by.push(format!(
                    "jobs {} are assigned to it (wait for them or cancel them)",
                    jobs.join(", ")
                ));
            }
            if !credentials.is_empty() {
                by.push(format!("credentials {} send their jobs to it (store them with another agent or delete them first)", credentials.join(", ")));
            }
            return Err(HubError::InUse {
                what: format!("Agent {name}"),
                by: by.join("; "),
            });
        }
        self.catalog.delete_agent(name)?;
        tracing::info!(agent = %name, "agent deleted");
        Ok(agent)
    }

    /// Running jobs and their agents.
    fn running_jobs(&self) -> Result<Vec<(AgentName, JobId)>, HubError> {
        Ok(self
            .catalog
            .leased_jobs()?
            .into_iter()
            .filter(|j| j.status == JobStatus::Running)
            .filter_map(|j| Some((j.agent?, j.job_id)))
            .collect())
    }

    fn read_tls(&self, file: &'static str) -> Result<String, HubError> {
        let path = self.tls_dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                HubError::NoCa {
                    dir: self.tls_dir.clone(),
                    file,
                }
            } else {
                HubError::Io { path, source }
            }
        })
    }
}

/// Hex SHA-256 of `bytes`: how tokens are stored (they are 256-bit random, so a fast hash is
/// the right one).
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest(&SHA256, bytes).as_ref())
}

/// A fresh random 256-bit token, hex.
fn random_token() -> String {
    // ThreadRng is a CSPRNG seeded from the OS.
    let raw: [u8; 32] = rand::random();
    hex(&raw)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn to_api(record: &AgentRecord, running: &[(AgentName, JobId)], now: Timestamp) -> Agent {
    let online = record.last_seen.is_some_and(|seen| {
        now.unix_seconds().saturating_sub(seen.unix_seconds()) <= i64::from(ONLINE_SECONDS)
    });
    let state = match (record.enrolled, online) {
        (false, _) => AgentState::Pending,
        (true, true) => AgentState::Online,
        (true, false) => AgentState::Offline,
    };
    Agent {
        name: record.name.clone(),
        state,
        version: record.version.clone(),
        slots: record.slots,
        running_jobs: running
            .iter()
            .filter(|(agent, _)| *agent == record.name)
            .map(|(_, id)| id.clone())
            .collect(),
        last_seen: record.last_seen,
        created_at: record.created_at,
        enrolled_at: record.enrolled_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn caller_admin_acts_for_every_agent_agent_only_for_itself() {
        let a1: AgentName = "a1".parse().unwrap();
        let a2: AgentName = "a2".parse().unwrap();

        assert_eq!(
            (
                Caller::Admin.acts_for(&a1),
                Caller::Agent(a1.clone()).acts_for(&a1),
                Caller::Agent(a1).acts_for(&a2)
            ),
            (true, true, false)
        );
    }
}
