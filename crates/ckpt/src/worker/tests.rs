//! Tests of worker ids and the local process probe.

use super::*;

#[test]
fn id_round_trips() {
    let id = WorkerId::for_this_process();
    assert_eq!(WorkerId::parse(&id.to_string()), Some(id.clone()));
    assert_eq!(id.pid, std::process::id());
    assert!(WorkerId::parse("just-a-name").is_none());
    assert!(WorkerId::parse("h:notapid:1:x").is_none());
}

#[cfg(target_os = "linux")]
#[test]
fn probe_tells_live_from_dead() {
    let me = WorkerId::for_this_process();
    assert!(me.start > 0);
    assert!(!LocalProcesses.is_dead(&me));
    let reused_pid = WorkerId {
        start: me.start + 1,
        ..me.clone()
    };
    assert!(LocalProcesses.is_dead(&reused_pid));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let child_pid = child.id();
    child.wait().unwrap();
    let gone = WorkerId {
        pid: child_pid,
        ..me.clone()
    };
    assert!(LocalProcesses.is_dead(&gone));
    // A dead run whose sentinel lives on is not dead yet; nor is one
    // whose sentinel's start time is unknown.
    assert!(!LocalProcesses.is_dead(&gone.clone().with_sentinel(me.pid, me.start)));
    assert!(!LocalProcesses.is_dead(&gone.clone().with_sentinel(child_pid, 0)));
    assert!(LocalProcesses.is_dead(&gone.clone().with_sentinel(child_pid, 5)));
    assert!(!LocalProcesses.is_dead(&me.clone().with_sentinel(child_pid, 5)));
    // Stopping: the owner is gone, its sentinel is not.
    assert!(LocalProcesses.is_stopping(&gone.clone().with_sentinel(me.pid, me.start)));
    assert!(!LocalProcesses.is_stopping(&gone.clone().with_sentinel(child_pid, 5)));
    assert!(!LocalProcesses.is_stopping(&gone));
    assert!(!LocalProcesses.is_stopping(&me.clone().with_sentinel(me.pid, me.start)));
    let remote = WorkerId {
        host: "another-host".into(),
        pid: child_pid,
        ..me
    };
    assert!(!LocalProcesses.is_dead(&remote));
}

#[test]
fn sentinel_rides_in_the_nonce_and_old_ids_still_parse() {
    let id = WorkerId::for_this_process().with_sentinel(4242, 99);
    assert_eq!(id.sentinel(), Some((4242, 99)));
    let text = id.to_string();
    assert!(text.ends_with(".4242.99"), "{text}");
    let parsed = WorkerId::parse(&text).unwrap();
    assert_eq!(parsed, id);
    assert_eq!(parsed.sentinel(), Some((4242, 99)));
    // Replacing the sentinel keeps the random part.
    let again = id.clone().with_sentinel(7, 8);
    assert_eq!(again.nonce.split('.').next(), id.nonce.split('.').next());
    assert_eq!(again.sentinel(), Some((7, 8)));
    // An id written before sentinels existed.
    let old = WorkerId::parse("host~1a2b3c4d:123:456:0badcafe").unwrap();
    assert_eq!((old.pid, old.start, old.sentinel()), (123, 456, None));
    assert_eq!(old.to_string(), "host~1a2b3c4d:123:456:0badcafe");
    assert_eq!(WorkerId::parse("h:1:2:n.x.3").unwrap().sentinel(), None);
}

#[cfg(target_os = "linux")]
#[test]
fn is_gone_asks_kill_then_the_start_time() {
    let me = std::process::id();
    let start = process_start_ticks(me).unwrap();
    assert!(!is_gone(me, start), "this process is alive");
    assert!(is_gone(me, start + 1), "same pid, another start: reused");
    // Never a group or every process.
    assert!(!is_gone(0, 0));
    assert!(!is_gone(u32::MAX, 1));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let child_start = process_start_ticks(pid).unwrap_or(1);
    child.wait().unwrap();
    assert!(is_gone(pid, child_start), "reaped: kill() says ESRCH");
    // A zombie still answers kill(): /proc says it exited.
    let zombie = std::process::Command::new("true").spawn().unwrap();
    let zpid = zombie.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(read_stat(zpid), Some(Stat::Exited)) {
        assert!(std::time::Instant::now() < deadline, "child never exited");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(zpid as i32, 0) }, 0, "a zombie");
    assert!(is_gone(zpid, 1));
    drop(zombie); // std does not reap; the test harness exits soon
}

/// Run by [`another_users_process_is_alive_though_proc_hides_it`] as
/// another user in a mount namespace with `/proc` mounted `hidepid=2`;
/// does nothing otherwise.
#[cfg(target_os = "linux")]
#[test]
fn probe_as_another_user() {
    let Ok(target) = std::env::var("CKPT_TEST_PROBE_TARGET") else {
        return;
    };
    let (pid, start) = target.split_once(':').unwrap();
    let (pid, start): (u32, u64) = (pid.parse().unwrap(), start.parse().unwrap());
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err(),
        "hidepid hides the other user's process"
    );
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid as i32, 0) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    assert!(!is_gone(pid, start), "alive though unreadable");
    let owner = WorkerId {
        pid,
        start,
        ..WorkerId::for_this_process()
    };
    assert!(!LocalProcesses.is_dead(&owner));
    // Its own processes it still judges.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    assert!(is_gone(gone, 1));
    println!("probe-as-another-user: ok");
}

#[cfg(target_os = "linux")]
#[test]
fn another_users_process_is_alive_though_proc_hides_it() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: pid 1 belongs to someone else; kill() says EPERM.
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if unsafe { libc::kill(1, 0) } != 0 {
            let start = process_start_ticks(1).unwrap_or(0);
            assert!(!is_gone(1, start), "pid 1 is alive");
        }
        eprintln!("skipped the hidepid part: it needs root");
        return;
    }
    let me = std::process::id();
    let start = process_start_ticks(me).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = r#"mount -t proc -o hidepid=2 proc /proc || exit 97
exec setpriv --reuid=65534 --regid=65534 --clear-groups "$0" --exact worker::tests::probe_as_another_user --nocapture"#;
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--fork", "sh", "-c"])
        .arg(script)
        .arg(&exe)
        .env("CKPT_TEST_PROBE_TARGET", format!("{me}:{start}"))
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("probe-as-another-user: ok"), "{text}");
}

#[cfg(target_os = "linux")]
#[test]
fn orphans_of_a_dead_worker_are_killed() {
    let dead = WorkerId {
        nonce: "orphan-test".into(),
        ..WorkerId::for_this_process()
    };
    let spawn = |id: &WorkerId| {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .env(WORKER_ENV, id.to_string())
            .spawn()
            .unwrap();
        // spawn() returns while the child is still inside execve, when
        // its /proc environ reads empty: wait until the exec is done.
        let marker = format!("{WORKER_ENV}={id}\0").into_bytes();
        let environ = format!("/proc/{}/environ", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read(&environ)
            .unwrap_or_default()
            .windows(marker.len())
            .any(|w| w == marker.as_slice())
        {
            assert!(std::time::Instant::now() < deadline, "child never exec'd");
            std::thread::yield_now();
        }
        child
    };
    let mut orphan = spawn(&dead);
    let other = WorkerId {
        nonce: "someone-else".into(),
        ..dead.clone()
    };
    let mut bystander = spawn(&other);
    assert_eq!(LocalProcesses.kill_orphans(&dead), 1);
    let status = orphan.wait().unwrap();
    assert!(!status.success());
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "other workers' processes live on"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
