//! QEMU VMs against a real `qemu-system-x86_64` (TCG) running a tiny guest with the real
//! `qemu-ga` (`tests/fixtures/qemu-guest.sh`, which `make test` builds). The agent binary holds
//! the VM's QMP monitor; the test drives QEMU through a second monitor of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::agent::{Agent, check_of};

/// Boot and reset under TCG on two busy cores take up to about a minute.
const BOOT: Duration = Duration::from_secs(150);
const WAIT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qemu-guest.sh")
}

/// A guest run by the fixture; killed when dropped.
struct Guest {
    child: Child,
    dir: PathBuf,
}

impl Guest {
    fn start(dir: &Path) -> Guest {
        let out = Command::new(script()).arg("build").output().unwrap();
        assert!(out.status.success(), "qemu-guest.sh build: {}", String::from_utf8_lossy(&out.stderr));
        let test_monitor =
            format!("socket,id=qmpt,path={},server=on,wait=off", dir.join("test.sock").display());
        // The guest agent held back 8 s at every boot: QEMU runs and QMP answers long before
        // the guest agent does, however fast this machine boots the guest, so a short boot
        // grace sees a stuck boot every time.
        let child = Command::new(script())
            .env("VIGIL_GA_DELAY", "8")
            .arg("run")
            .arg(dir)
            .args(["-chardev", &test_monitor, "-mon", "chardev=qmpt,mode=control"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Guest { child, dir: dir.to_owned() }
    }

    /// One command on the test's own monitor; its `return`.
    fn qmp(&self, command: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match UnixStream::connect(self.dir.join("test.sock")) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "test monitor: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("QMP"), "greeting: {line}");
        for c in [json!({"execute": "qmp_capabilities"}), json!({"execute": command})] {
            writeln!(writer, "{c}").unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                if let Some(r) = v.get("return") {
                    if c["execute"] == command {
                        return r.clone();
                    }
                    break;
                }
                assert!(v.get("error").is_none(), "{command}: {v}");
            }
        }
        unreachable!()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vm_check(name: &str, vm: &str, extra: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata:\n  name: {name}\nspec:\n  target:\n    vms:\n      names: [{vm}]\n  probe:\n    qmp:\n      checks: [runState, guestAgent, blockDevices, filesystems]\n    periodSeconds: 2\n    timeoutSeconds: 5\n    failureThreshold: 2\n{extra}"
    )
}

/// What the guest says of itself, through guest-agent file reads, and its consoles; report only.
fn guest_check() -> String {
    "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata:\n  name: guest\nspec:\n  target:\n    vms:\n      names: [g1]\n  probe:\n    qmp:\n      checks: [readOnlyFilesystems, guestMemory, console]\n      memoryAvailablePercent: 50\n    periodSeconds: 1\n    timeoutSeconds: 5\n    failureThreshold: 1\n".to_owned()
}

/// Runs `script` in the guest with `sh -c`, through the guest agent (the agent under test
/// connects to it per probe, so the test can too), and waits for it to end.
fn guest_sh(qga: &Path, script: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true});
    let started = rt
        .block_on(vigil::qemu::qga::execute(qga, "guest-exec", Some(run), Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("guest-exec {script}: {e}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let status = rt
            .block_on(vigil::qemu::qga::execute(
                qga,
                "guest-exec-status",
                Some(json!({"pid": started["pid"]})),
                Duration::from_secs(20),
            ))
            .unwrap();
        if status["exited"] == true {
            assert_eq!(status["exitcode"], 0, "{script}: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "{script} still running: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The check of the guest test: every qmp check, `restartVM` on failure.
fn restarted_vm_check() -> String {
    vm_check(
        "vm",
        "g1",
        "  action:\n    type: restartVM\n    maxRestarts: 3\n    backoff: {initialSeconds: 1}",
    )
}

fn vm_id(name: &str) -> String {
    vigil::inventory::id_for(vigil::api::InstanceKind::Vm, name, "test-node")
}

fn status_of<'a>(instance: &'a Value, which: &str) -> &'a Value {
    &instance["status"][which]["status"]
}

fn restarts(instance: &Value) -> u64 {
    instance["status"]["restarts"]["count"].as_u64().unwrap_or(0)
}

#[test]
fn a_real_guest_through_pause_agent_loss_reset_and_death() {
    let root = tempfile::Builder::new().prefix("vq").tempdir_in("/tmp").unwrap();
    let vm_dir = root.path().join("vms").join("g1");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let mut guest = Guest::start(&vm_dir);
    let glob = format!("{}/vms/*/qmp.sock", root.path().display());
    let mut agent = Agent::start(&root.path().join("agent"), &["--vm-socket-glob", &glob]);
    // A boot grace of one second: the guest still booting under TCG is a stuck boot to this
    // check (impaired, reason boot) — until its guest agent answers.
    agent.write_check(
        "boot.yaml",
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata:\n  name: boot\nspec:\n  target:\n    vms:\n      names: [g1]\n  probe:\n    qmp:\n      checks: [guestAgent]\n      bootGraceSeconds: 1\n    periodSeconds: 1\n    timeoutSeconds: 1\n    failureThreshold: 1\n",
    );
    agent.write_check("vm.yaml", &restarted_vm_check());
    let stuck = agent.wait_status(&vm_id("g1"), "default/boot", "impaired", BOOT);
    let stuck = check_of(&stuck, "default/boot").unwrap().clone();
    assert_eq!(stuck["reason"], "boot", "{stuck}");
    assert!(stuck["message"].as_str().unwrap().contains("boot grace 1 s"), "{stuck}");
    agent.wait_status(&vm_id("g1"), "default/boot", "ok", BOOT);
    agent.remove_check("boot.yaml");

    // Running: all three checks ok, and the host counts its vCPU and memory.
    let up = agent.wait_status(&vm_id("g1"), "default/vm", "ok", BOOT);
    assert_eq!(up["spec"]["instance"]["kind"], "VM");
    assert_eq!(up["status"]["state"], "running");
    for which in ["systemStatus", "instanceStatus", "attachedVolumeStatus"] {
        assert_eq!(status_of(&up, which), "ok", "{which}: {}", up["status"]);
    }
    let volume = &up["status"]["attachedVolumeStatus"]["details"][0];
    assert_eq!(volume["name"], "data0", "{volume}");
    let host = agent.json("/v1/host/status")["data"].clone();
    assert_eq!(host["running_vms"], 1, "{host}");
    assert_eq!(host["used_cpus"], 1.0, "{host}");
    assert_eq!(host["used_memory_mb"], 256, "{host}");
    assert_eq!(restarts(&up), 0, "a booting guest is not a failing one");
    // The host's view of the VM: its QEMU process's CPU and resident memory beside what it was
    // configured with, in the System check and as metrics.
    let process =
        agent.wait_for(&format!("/v1/instances/{}", vm_id("g1")), "the QEMU process's figures", WAIT, |d| {
            d["data"]["status"]["systemStatus"]["details"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["name"] == "qemu-process" && x["message"].as_str().is_some_and(|m| m.contains("% CPU"))
                })
            })
        });
    let detail = process["data"]["status"]["systemStatus"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "qemu-process")
        .unwrap()
        .clone();
    let message = detail["message"].as_str().unwrap();
    assert!(message.contains("MiB RSS (1 vCPUs, 256 MiB configured)"), "{detail}");
    let rss: u64 =
        message.split(", ").nth(1).and_then(|p| p.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!((20..2048).contains(&rss), "a QEMU process's RSS in MiB: {detail}");
    let (_, metrics) = agent.get("/metrics");
    let series = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{instance_id=\"{}\",vm=\"g1\"}}", vm_id("g1"))))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} for g1 in\n{metrics}"))
    };
    assert_eq!(series("vigil_vm_vcpus"), 1.0);
    assert_eq!(series("vigil_vm_memory_configured_bytes"), 256.0 * 1024.0 * 1024.0);
    assert!(series("vigil_vm_memory_rss_bytes") > 20.0 * 1024.0 * 1024.0);
    assert!(series("vigil_vm_cpu_percent") >= 0.0);
    support::agent::promtool_check(&metrics);

    // The guest's own view, read through guest-agent file reads: its filesystem turned
    // read-only, its memory used up; and its console.
    let qga = vm_dir.join("qga.sock");
    agent.write_check("guest.yaml", &guest_check());
    let seen = agent.wait_status(&vm_id("g1"), "default/guest", "ok", WAIT);
    let message = check_of(&seen, "default/guest").unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("1 guest filesystems writable"), "{message}");
    assert!(message.contains("% of guest memory available"), "{message}");
    assert!(message.contains("console: serial ser0 (file"), "{message}");
    guest_sh(&qga, "mount -o remount,ro /data");
    let ro = agent.wait_status(&vm_id("g1"), "default/guest", "impaired", WAIT);
    let entry = check_of(&ro, "default/guest").unwrap().clone();
    assert_eq!(entry["reason"], "read-only-filesystem", "{entry}");
    assert!(entry["message"].as_str().unwrap().contains("/data (ext4 /dev/vda)"), "{entry}");
    guest_sh(&qga, "mount -o remount,rw /data");
    agent.wait_status(&vm_id("g1"), "default/guest", "ok", WAIT);
    // Two thirds of what is available, into a tmpfs: below the check's 50%.
    guest_sh(
        &qga,
        "mount -o remount,size=90% /dev/shm && n=$(awk '/MemAvailable/ {print int($2 / 1536)}' /proc/meminfo) && dd if=/dev/zero of=/dev/shm/fill bs=1M count=$n 2>/dev/null",
    );
    let full = agent.wait_status(&vm_id("g1"), "default/guest", "impaired", WAIT);
    let entry = check_of(&full, "default/guest").unwrap().clone();
    assert_eq!(entry["reason"], "memory-exhausted", "{entry}");
    assert!(entry["message"].as_str().unwrap().contains("below 50%"), "{entry}");
    guest_sh(&qga, "rm /dev/shm/fill");
    agent.wait_status(&vm_id("g1"), "default/guest", "ok", WAIT);
    agent.remove_check("guest.yaml");
    assert_eq!(restarts(&agent.instance(&vm_id("g1"))), 0, "a report-only check restarts nothing");

    // Paused by its operator: not-applicable, no restart.
    guest.qmp("stop");
    let paused = agent.wait_status(&vm_id("g1"), "default/vm", "not-applicable", WAIT);
    assert_eq!(paused["status"]["state"], "paused");
    guest.qmp("cont");
    agent.wait_status(&vm_id("g1"), "default/vm", "ok", WAIT);
    assert_eq!(restarts(&agent.instance(&vm_id("g1"))), 0);

    // The guest agent dies: Instance impaired (reachability) while System stays ok; the action
    // resets the VM, the agent comes back with the guest, and the restart is counted.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let kill = json!({"path": "/bin/sh", "arg": ["-c", "killall qemu-ga"], "capture-output": false});
    rt.block_on(vigil::qemu::qga::execute(&qga, "guest-exec", Some(kill), Duration::from_secs(20))).unwrap();
    let lost = agent.wait_for(&format!("/v1/instances/{}", vm_id("g1")), "reachability to fail", WAIT, |d| {
        status_of(&d["data"], "instanceStatus") == "impaired"
    })["data"]
        .clone();
    let entry = check_of(&lost, "default/vm").unwrap();
    assert_eq!(entry["reason"], "guest-agent", "{entry}");
    assert!(entry["message"].as_str().unwrap().contains("reachability"), "{entry}");
    assert_eq!(status_of(&lost, "systemStatus"), "ok", "{}", lost["status"]);
    assert!(
        lost["status"]["instanceStatus"]["details"][0]["impairedSince"].is_string(),
        "{}",
        lost["status"]["instanceStatus"]
    );
    let back = agent.wait_for(
        &format!("/v1/instances/{}", vm_id("g1")),
        "the reset guest to answer again",
        BOOT,
        |d| {
            restarts(&d["data"]) == 1
                && check_of(&d["data"], "default/vm").is_some_and(|c| c["status"] == "ok")
        },
    )["data"]
        .clone();
    let record = &back["status"]["restarts"]["recent"][0];
    assert_eq!(record["action"], "restartVM");
    assert!(record["message"].as_str().unwrap().contains("system_reset"), "{record}");

    // The agent killed and started again: the VM's restart history is what it was (restored,
    // not forgotten before the VM sockets were scanned), and nothing is restarted anew.
    agent.wait_written(&vm_id("g1"), "the restart", |d| d["status"]["restarts"]["count"] == 1);
    agent.kill9();
    agent.restart();
    let restored = agent.wait_status(&vm_id("g1"), "default/vm", "ok", WAIT);
    assert_eq!(restarts(&restored), 1, "{}", restored["status"]);
    assert_eq!(restored["status"]["restarts"]["recent"][0]["time"], record["time"]);
    assert_eq!(restored["metadata"]["creationTimestamp"], back["metadata"]["creationTimestamp"]);

    // Maintenance: the VM named in the target's `suspend` list is left alone, and comes back
    // when taken off it.
    agent.write_check(
        "vm.yaml",
        &restarted_vm_check().replace("      names: [g1]\n", "      names: [g1]\n      suspend: [g1]\n"),
    );
    agent.wait_status(&vm_id("g1"), "default/vm", "not-applicable", WAIT);
    agent.write_check("vm.yaml", &restarted_vm_check());
    agent.wait_status(&vm_id("g1"), "default/vm", "ok", WAIT);

    // A guest agent that does not allow file reads (as some distributions ship it): the guest's
    // own view is insufficient-data, naming the command, and nothing is restarted. qemu-ga is
    // restarted with guest-file-open blocked while the VM check reports only.
    agent.write_check("vm.yaml", &vm_check("vm", "g1", ""));
    agent.write_check("guest.yaml", &guest_check());
    agent.wait_status(&vm_id("g1"), "default/guest", "ok", WAIT);
    guest_sh(
        &qga,
        "setsid sh -c 'sleep 1; killall qemu-ga; sleep 1; exec /usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run -b guest-file-open' </dev/null >/dev/console 2>&1 &",
    );
    let refused = agent.wait_status(&vm_id("g1"), "default/guest", "insufficient-data", BOOT);
    let entry = check_of(&refused, "default/guest").unwrap().clone();
    assert!(entry["message"].as_str().unwrap().contains("does not allow guest-file-open"), "{entry}");
    agent.wait_status(&vm_id("g1"), "default/vm", "ok", WAIT);
    assert_eq!(restarts(&agent.instance(&vm_id("g1"))), 1, "{}", refused["status"]);

    // QEMU dies: System impaired, and the VM is not counted as running any more.
    let pid = guest.pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = guest.child.wait();
    // Both parts of the System check fail: the QMP connection at once, the process at the next
    // look at /proc.
    let impaired = |d: &Value, name: &str| {
        d["status"]["systemStatus"]["details"]
            .as_array()
            .is_some_and(|ds| ds.iter().any(|x| x["name"] == name && x["status"] == "impaired"))
    };
    let dead = agent.wait_for(&format!("/v1/instances/{}", vm_id("g1")), "System impaired", WAIT, |d| {
        status_of(&d["data"], "systemStatus") == "impaired"
            && impaired(&d["data"], "qemu-process")
            && impaired(&d["data"], "reachability")
    })["data"]
        .clone();
    let details = dead["status"]["systemStatus"]["details"].as_array().unwrap();
    assert!(details.iter().any(|d| d["name"] == "qemu-process" && d["status"] == "impaired"), "{details:?}");
    assert!(details.iter().any(|d| d["name"] == "reachability" && d["status"] == "impaired"), "{details:?}");
    assert_eq!(agent.json("/v1/host/status")["data"]["running_vms"], 0);
}

#[test]
fn a_monitor_that_answers_garbage_is_insufficient_data() {
    let root = tempfile::Builder::new().prefix("vq").tempdir_in("/tmp").unwrap();
    let dir = root.path().join("vms").join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let listener = UnixListener::bind(dir.join("qmp.sock")).unwrap();
    // Garbage to whoever connects, then a close in the middle of a line.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.write_all(b"{\"QMP\": {\"version\": 12}, \"capabil");
            drop(s);
        }
    });
    let glob = format!("{}/vms/*/qmp.sock", root.path().display());
    let agent = Agent::start(&root.path().join("agent"), &["--vm-socket-glob", &glob]);
    agent.write_check("vm.yaml", &vm_check("vm", "bad", ""));
    let seen = agent.wait_status(&vm_id("bad"), "default/vm", "insufficient-data", WAIT);
    let message = check_of(&seen, "default/vm").unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("QMP"), "{message}");
    assert_eq!(restarts(&seen), 0);
    // The agent itself is fine.
    assert_eq!(agent.json("/v1/health")["status"], "healthy");
    let (status, _) = agent.get("/healthz");
    assert_eq!(status, 200);
}
