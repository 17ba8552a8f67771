//! `chopstick run`: every reference server, in-process, under every fault profile.
//!
//! Each TCP target (echo, upper, exec, file, auth) is started on an ephemeral loopback
//! port in this process ([`start`]) and driven like `check` drives a `--connect`
//! target: for each fault profile, `connections` seeded cases judged by the target's
//! oracle, liveness after every cut, the first failure of each class shrunk into a
//! reproducer. udp gets one row from the datagram check against the in-process UDP
//! echo server. The result is one [`Report`]: rows per target x fault.
//!
//! Reproducers must outlive the process whose servers they ran against, so each target
//! also names a [`TargetSpec::Spawn`] of the equivalent `chopstick serve ...` command
//! (file's root and auth's key file are created under the artifacts directory);
//! `chopstick replay FILE` starts that instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::check::{drive_profile, Artifacts, Drive, Profile, Progress};
use super::{shrink, CaseConfig, FailureClass, Target, TargetSpec, Timing};
use crate::chaos::FaultSet;
use crate::oracle::auth::{Auth, AuthKey};
use crate::oracle::echo::{Echo, Upper};
use crate::oracle::{exec::Exec, file::File, Oracle};
use crate::report::{FailureRecord, Report, Row};
use crate::udp::{FailureKind, UdpCheckConfig, UdpOracle, UdpReproducer, UdpTarget};
use crate::workload::{Mode, Workload};
use chopstick_targets::server::{self, Handle};
use chopstick_targets::wire::Framing;
use chopstick_targets::{auth, echo, exec, file};

/// The fault profiles of a run when `--faults` is not given: one report row each.
pub const DEFAULT_PROFILES: &str = "split,boundary,coalesce,disconnect,mixed";
/// The datagram faults of the udp row.
pub const UDP_FAULTS: &str =
    "loss:p=0.05,dup:p=0.05,reorder:window=4:p=0.2,delay:us=1000:jitter_us=500";

/// A reference server `run` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKind {
    Echo,
    Upper,
    Exec,
    File,
    Auth,
    Udp,
}

impl TargetKind {
    pub const ALL: [TargetKind; 6] = [
        TargetKind::Echo,
        TargetKind::Upper,
        TargetKind::Exec,
        TargetKind::File,
        TargetKind::Auth,
        TargetKind::Udp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Echo => "echo",
            TargetKind::Upper => "upper",
            TargetKind::Exec => "exec",
            TargetKind::File => "file",
            TargetKind::Auth => "auth",
            TargetKind::Udp => "udp",
        }
    }
}

impl FromStr for TargetKind {
    type Err = RunError;

    fn from_str(s: &str) -> Result<TargetKind, RunError> {
        TargetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| RunError::UnknownTarget(s.to_string()))
    }
}

/// Why a run could not be set up (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("unknown target `{0}` (expected echo, upper, exec, file, auth or udp)")]
    UnknownTarget(String),
    #[error("--targets names no target")]
    NoTargets,
    #[error("--faults: `{profile}`: {message}")]
    Faults { profile: String, message: String },
    #[error("--faults names no fault profile")]
    NoProfiles,
    #[error("cannot start the in-process {target} server: {source}")]
    Start {
        target: &'static str,
        source: std::io::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses a comma-separated `--targets` list (duplicates dropped, order kept).
pub fn parse_targets(list: &str) -> Result<Vec<TargetKind>, RunError> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind: TargetKind = name.parse()?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    if out.is_empty() {
        return Err(RunError::NoTargets);
    }
    Ok(out)
}

/// Parses a `--faults` list of profiles: comma-separated, `+` combines faults in one
/// profile (as in `check`).
pub fn parse_profiles(list: &str) -> Result<Vec<Profile>, RunError> {
    let profiles: Vec<Profile> = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let faults = p
                .replace('+', ",")
                .parse::<FaultSet>()
                .map_err(|e| RunError::Faults {
                    profile: p.to_string(),
                    message: e.to_string(),
                })?;
            Ok(Profile {
                name: p.to_string(),
                faults,
            })
        })
        .collect::<Result<_, RunError>>()?;
    if profiles.is_empty() {
        return Err(RunError::NoProfiles);
    }
    Ok(profiles)
}

/// How much traffic each target gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Connections per target and fault profile.
    pub connections: usize,
    pub messages: usize,
    pub max_size: usize,
    /// Datagrams of the udp row.
    pub datagrams: usize,
}

impl Scale {
    /// `--quick`: every target, fault and auth variant, in seconds.
    pub fn quick() -> Scale {
        Scale {
            connections: 8,
            messages: 8,
            max_size: 64 * 1024,
            datagrams: 100,
        }
    }

    /// The default run: `check`'s defaults for every target.
    pub fn full() -> Scale {
        Scale {
            connections: 20,
            messages: 16,
            max_size: 1024 * 1024,
            datagrams: 300,
        }
    }
}

/// Everything a run needs.
#[derive(Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub scale: Scale,
    pub targets: Vec<TargetKind>,
    pub profiles: Vec<Profile>,
    /// Reproducers, and the file root and key file their spawn commands use.
    pub artifacts: PathBuf,
    /// The chopstick binary that reproducers spawn (`serve ...`).
    pub exe: PathBuf,
    pub shrink: bool,
}

impl RunConfig {
    /// All targets, the default profiles, full scale.
    pub fn new(exe: PathBuf, seed: u64, artifacts: PathBuf) -> RunConfig {
        RunConfig {
            seed,
            scale: Scale::full(),
            targets: TargetKind::ALL.to_vec(),
            profiles: parse_profiles(DEFAULT_PROFILES).expect("the default profiles parse"),
            artifacts,
            exe,
            shrink: true,
        }
    }
}

/// Something to create before a reproducer's spawn command can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepare {
    /// A directory (file's `--root`).
    Dir(PathBuf),
    /// A file readable only by its owner (auth's `--key-file`).
    Secret(PathBuf, Vec<u8>),
}

impl Prepare {
    fn apply(&self) -> Result<(), RunError> {
        let wrap = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunError::Prepare { path, source }
        };
        match self {
            Prepare::Dir(dir) => std::fs::create_dir_all(dir).map_err(wrap(dir)),
            Prepare::Secret(path, bytes) => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(wrap(dir))?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)
                    .and_then(|mut f| f.write_all(bytes))
                    .map_err(wrap(path))
            }
        }
    }
}

/// A TCP target of a run: where it listens, how it is judged, and what a reproducer
/// starts in its place.
#[derive(Debug, Clone)]
pub struct RunTarget {
    pub name: String,
    pub addr: SocketAddr,
    pub case: CaseConfig,
    /// The command a reproducer spawns (`{port}` is filled in by `replay`).
    pub repro: TargetSpec,
    /// What that command needs on disk.
    pub prepare: Vec<Prepare>,
}

/// An in-process reference server and its [`RunTarget`].
#[derive(Debug)]
pub struct Started {
    pub target: RunTarget,
    pub handle: Handle,
    /// file's root: removed when the run ends.
    _root: Option<tempfile::TempDir>,
}

/// The case settings of a run target: pipelined, half-close, default timing.
pub fn case_config(framing: Framing, oracle: Arc<dyn Oracle>) -> CaseConfig {
    CaseConfig {
        framing,
        reply_framing: None,
        oracle,
        mode: Mode::Pipelined,
        half_close: true,
        timing: Timing::default(),
        liveness: Duration::from_secs(3),
    }
}

/// A word of a spawn command, quoted when it has to be (see `split_command`).
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if !s
        .chars()
        .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        s
    } else if s.contains('\'') {
        format!("\"{s}\"")
    } else {
        format!("'{s}'")
    }
}

/// Starts the reference server `kind` (not udp) in-process on an ephemeral loopback
/// port. `artifacts` should be absolute: reproducer commands name paths under it.
pub async fn start(kind: TargetKind, exe: &Path, artifacts: &Path) -> Result<Started, RunError> {
    let fail = |source| RunError::Start {
        target: kind.name(),
        source,
    };
    let listener = server::bind(([127, 0, 0, 1], 0).into(), 1024).map_err(fail)?;
    let serve = |args: &str| {
        TargetSpec::Spawn(format!(
            "{} serve {args} --listen 127.0.0.1:{{port}}",
            quote(exe)
        ))
    };
    let u32be: Framing = "u32be".parse().expect("a valid framing");
    let hjson: Framing = "hjson".parse().expect("a valid framing");
    let mut root = None;
    let mut prepare = Vec::new();
    let (handle, case, repro) = match kind {
        TargetKind::Echo | TargetKind::Upper => {
            let upper = kind == TargetKind::Upper;
            let config = echo::Config {
                framing: u32be,
                transform: if upper {
                    echo::Transform::Upper
                } else {
                    echo::Transform::None
                },
                ..echo::Config::default()
            };
            let handle = Handle::spawn(listener, |l, stop| echo::run(l, config, stop));
            let (oracle, args): (Arc<dyn Oracle>, _) = if upper {
                (Arc::new(Upper), "echo --transform upper")
            } else {
                (Arc::new(Echo), "echo")
            };
            (handle, case_config(u32be, oracle), serve(args))
        }
        TargetKind::Exec => {
            let handle = Handle::spawn(listener, |l, stop| {
                exec::run(l, exec::Config::default(), stop)
            });
            // Ping-pong: the server kills what runs when the client closes, so a cut
            // right after pipelined requests would leave no reply to judge.
            let case = CaseConfig {
                mode: Mode::PingPong,
                ..case_config(hjson, Arc::new(Exec))
            };
            (handle, case, serve("exec"))
        }
        TargetKind::File => {
            let dir = tempfile::Builder::new()
                .prefix("chopstick-run-file-")
                .tempdir()
                .map_err(fail)?;
            let config = file::Config::new(dir.path());
            root = Some(dir);
            let handle = Handle::spawn(listener, |l, stop| file::run(l, config, stop));
            let repro_root = artifacts.join("file-root");
            let spec = serve(&format!("file --root {}", quote(&repro_root)));
            prepare.push(Prepare::Dir(repro_root));
            (handle, case_config(hjson, Arc::new(File)), spec)
        }
        TargetKind::Auth => {
            let key = AuthKey::random();
            let config = auth::Config::new(
                key.bytes().to_vec(),
                auth::Inner::Echo(echo::Config::default()),
            );
            let handle = Handle::spawn(listener, |l, stop| auth::run(l, config, stop));
            let key_file = artifacts.join("auth.key");
            let spec = serve(&format!("auth --key-file {}", quote(&key_file)));
            prepare.push(Prepare::Secret(key_file, key.bytes().to_vec()));
            (handle, case_config(u32be, Arc::new(Auth::new(key))), spec)
        }
        TargetKind::Udp => {
            return Err(fail(std::io::Error::other(
                "udp is not a TCP target; run() drives it separately",
            )))
        }
    };
    let handle = handle.map_err(fail)?;
    Ok(Started {
        target: RunTarget {
            name: kind.name().to_string(),
            addr: handle.addr,
            case,
            repro,
            prepare,
        },
        handle,
        _root: root,
    })
}

/// The workload of every TCP target at `scale`.
pub fn workload(scale: Scale) -> Workload {
    Workload {
        connections: scale.connections,
        messages: scale.messages,
        max_size: scale.max_size,
        // u32be and hjson both start with a 4-byte length.
        header_width: 4,
        sessions: None,
    }
}

/// Runs every configured target under every profile; fills `report`. Targets that
/// cannot start are recorded in `report.unusable` (exit code 2); other targets still run.
pub async fn run(config: &RunConfig, progress: &mut dyn Progress, report: &mut Report) {
    let artifacts = std::path::absolute(&config.artifacts).unwrap_or(config.artifacts.clone());
    let tcp = config
        .targets
        .iter()
        .filter(|k| **k != TargetKind::Udp)
        .count();
    let udp = config.targets.contains(&TargetKind::Udp);
    progress
        .start((tcp * config.profiles.len() * config.scale.connections) as u64 + u64::from(udp));
    for &kind in &config.targets {
        if kind == TargetKind::Udp {
            run_udp(config, &artifacts, progress, report).await;
            continue;
        }
        let started = match start(kind, &config.exe, &artifacts).await {
            Ok(s) => s,
            Err(e) => {
                report.unusable.push(e.to_string());
                continue;
            }
        };
        campaign(
            &started.target,
            config.scale,
            &config.profiles,
            config.seed,
            config.shrink.then_some(artifacts.as_path()),
            progress,
            report,
        )
        .await;
        // Bounded by the servers' own shutdown grace.
        if let Err(e) = started.handle.shutdown().await {
            tracing::warn!("{} server did not stop cleanly: {e}", kind.name());
        }
    }
    progress.finish();
}

/// Drives one TCP target with every profile, adding a row per profile to `report`.
/// With `artifacts`, the first failure of each class per profile is shrunk and written
/// there as a reproducer that spawns `target.repro`.
pub async fn campaign(
    target: &RunTarget,
    scale: Scale,
    profiles: &[Profile],
    seed: u64,
    artifacts: Option<&Path>,
    progress: &mut dyn Progress,
    report: &mut Report,
) {
    let mut live = match Target::start(&TargetSpec::Connect(target.addr)).await {
        Ok(t) => t,
        Err(e) => {
            report.unusable.push(format!("{}: {e}", target.name));
            return;
        }
    };
    let workload = workload(scale);
    let prepare = || {
        target
            .prepare
            .iter()
            .try_for_each(Prepare::apply)
            .map_err(|e| e.to_string())
    };
    let drive = Drive {
        name: &target.name,
        case: &target.case,
        workload: &workload,
        seed,
        shrink: Some((shrink::DEFAULT_BUDGET, shrink::DEFAULT_TIME)),
        artifacts: artifacts.map(|dir| Artifacts {
            dir,
            target: &target.repro,
            prepare: &prepare,
        }),
        stop: None,
        fail_fast: false,
        shard: None,
        // In turn: in-process servers share this process's runtime with the driver.
        concurrency: 1,
        confirm: shrink::DEFAULT_CONFIRM,
    };
    for profile in profiles {
        let row = drive_profile(&mut live, &drive, profile, progress, report).await;
        report.rows.push(row);
    }
}

fn udp_class(kind: FailureKind) -> FailureClass {
    match kind {
        FailureKind::SilentTruncation => FailureClass::Truncated,
        FailureKind::Lost => FailureClass::Lost,
        FailureKind::Duplicated => FailureClass::Duplicated,
        FailureKind::Corrupted | FailureKind::WrongTime => FailureClass::Corrupted,
    }
}

/// The udp row: the datagram check against the in-process UDP echo server.
async fn run_udp(
    config: &RunConfig,
    artifacts: &Path,
    progress: &mut dyn Progress,
    report: &mut Report,
) {
    let started = Instant::now();
    let handle = match chopstick_targets::udp::bind(([127, 0, 0, 1], 0).into()).and_then(|s| {
        chopstick_targets::udp::UdpHandle::spawn(s, chopstick_targets::udp::Config::default())
    }) {
        Ok(h) => h,
        Err(e) => {
            report
                .unusable
                .push(format!("cannot start the in-process udp server: {e}"));
            return;
        }
    };
    let mut check = UdpCheckConfig::new(UdpTarget::Connect(handle.addr), UdpOracle::Echo);
    check.faults = UDP_FAULTS.parse().expect("the udp faults parse");
    check.seed = config.seed;
    check.datagrams = config.scale.datagrams;
    check.artifacts = config.shrink.then(|| artifacts.to_path_buf());
    let bytes = crate::udp::check::requests(&check)
        .iter()
        .map(|r| r.request.0.len() as u64)
        .sum();
    let result = crate::udp::run_check(&check).await;
    if let Err(e) = handle.shutdown().await {
        tracing::warn!("udp server did not stop cleanly: {e}");
    }
    let udp = match result {
        Ok(r) => r,
        Err(e) => {
            report.unusable.push(format!("udp: {e}"));
            return;
        }
    };
    let mut row = Row::new("udp", "datagram");
    row.connections = 1;
    row.messages = udp.datagrams as u64;
    row.bytes = bytes;
    row.failures = udp.failures.len() as u64;
    let reproducer = udp
        .reproducer
        .as_deref()
        .and_then(|p| respawn_udp(p, &config.exe));
    for f in &udp.failures {
        let class = udp_class(f.kind);
        *row.classes.entry(class.to_string()).or_default() += 1;
        report.failures.push(FailureRecord {
            target: "udp".into(),
            fault: "datagram".into(),
            class,
            conn: 0,
            offset: None,
            detail: format!("{}: {}", f.kind, f.detail),
            reproducer: reproducer.clone(),
            finding: None,
        });
    }
    row.seconds = started.elapsed().as_secs_f64();
    row.finish();
    progress.tick(&row);
    report.rows.push(row);
}

/// Points a UDP reproducer written against the in-process server at a spawned
/// `chopstick serve udp` instead, so it can be replayed later.
fn respawn_udp(path: &Path, exe: &Path) -> Option<PathBuf> {
    let mut r = UdpReproducer::read(path).ok()?;
    r.target = UdpTarget::Spawn(format!(
        "{} serve udp --listen 127.0.0.1:{{port}}",
        quote(exe)
    ));
    let dir = path.parent()?;
    match r.write_to(dir) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("udp reproducer not rewritten: {e}");
            Some(path.to_path_buf())
        }
    }
}

/// Writes `--json` and `--junit` files if asked.
pub fn write_reports(
    report: &Report,
    json: Option<&Path>,
    junit: Option<&Path>,
) -> std::io::Result<()> {
    if let Some(path) = json {
        report.write_json(path)?;
    }
    if let Some(path) = junit {
        report.write_junit(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_profile_lists_parse_or_say_why_not() {
        assert_eq!(
            parse_targets("exec, echo,exec").unwrap(),
            [TargetKind::Exec, TargetKind::Echo]
        );
        assert!(matches!(
            parse_targets("echo,ftp"),
            Err(RunError::UnknownTarget(t)) if t == "ftp"
        ));
        assert!(matches!(parse_targets(" , "), Err(RunError::NoTargets)));
        assert_eq!(parse_profiles(DEFAULT_PROFILES).unwrap().len(), 5);
        assert!(parse_profiles("split+disconnect:mode=reset").is_ok());
        assert!(matches!(
            parse_profiles("sideways"),
            Err(RunError::Faults { .. })
        ));
    }

    #[test]
    fn paths_with_spaces_are_quoted_for_split_command() {
        let cmd = format!("{} serve", quote(Path::new("/a b/chop")));
        assert_eq!(
            super::super::target::split_command(&cmd).unwrap(),
            ["/a b/chop", "serve"]
        );
        assert_eq!(quote(Path::new("/plain")), "/plain");
    }
}
