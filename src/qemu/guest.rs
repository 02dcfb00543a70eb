//! What the guest itself says, read through the guest agent's file commands: its mounts
//! (filesystems the kernel turned read-only) and its memory. And the ways in to the VM (serial
//! consoles, VNC), from QMP.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::qga::{self, QgaError};

/// A guest file read larger than this is cut off: `/proc/mounts` and `/proc/meminfo` are a few
/// KiB.
const MAX_FILE: usize = 1 << 20;

/// Filesystems that take writes when healthy: one of these mounted read-only from a block
/// device is what the kernel does after I/O errors (`errors=remount-ro`), or a full journal.
const WRITABLE_TYPES: &[&str] =
    &["ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "vfat", "exfat", "ntfs", "ntfs3"];

/// Reads a whole file of the guest: `guest-file-open`, `guest-file-read` until its end,
/// `guest-file-close` (also after a failed read: the guest agent keeps handles until closed).
pub async fn read_file(socket: &Path, path: &str, timeout: Duration) -> Result<String, QgaError> {
    let handle = qga::execute(socket, "guest-file-open", Some(json!({"path": path, "mode": "r"})), timeout)
        .await?
        .as_i64()
        .ok_or_else(|| QgaError::Protocol(format!("guest-file-open {path} answered no handle")))?;
    let content = read_all(socket, handle, timeout).await;
    let closed = qga::execute(socket, "guest-file-close", Some(json!({"handle": handle})), timeout).await;
    let content = content?;
    closed?;
    Ok(String::from_utf8_lossy(&content).into_owned())
}

async fn read_all(socket: &Path, handle: i64, timeout: Duration) -> Result<Vec<u8>, QgaError> {
    let mut content = Vec::new();
    loop {
        let chunk =
            qga::execute(socket, "guest-file-read", Some(json!({"handle": handle, "count": 65536})), timeout)
                .await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(chunk["buf-b64"].as_str().unwrap_or(""))
            .map_err(|e| QgaError::Protocol(format!("guest-file-read: {e}")))?;
        content.extend_from_slice(&bytes);
        if chunk["eof"] == Value::Bool(true) || bytes.is_empty() || content.len() >= MAX_FILE {
            return Ok(content);
        }
    }
}

/// A mount of the guest, from `/proc/mounts`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    device: String,
    point: String,
    fstype: String,
    read_only: bool,
}

/// `/proc/mounts` (the kernel's octal escapes, `\040` for a space, undone).
fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, fstype, options) =
                (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            Some(Mount {
                device: unescape(device),
                point: unescape(point),
                fstype: fstype.to_owned(),
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The writable filesystems mounted read-only (mount point and device), and how many writable
/// ones there are in all.
pub fn read_only_filesystems(proc_mounts: &str, allowed: &[String]) -> (Vec<String>, usize) {
    let writable: Vec<Mount> = mounts(proc_mounts)
        .into_iter()
        .filter(|m| m.device.starts_with("/dev/") && WRITABLE_TYPES.contains(&m.fstype.as_str()))
        .collect();
    let read_only = writable
        .iter()
        .filter(|m| m.read_only && !allowed.contains(&m.point))
        .map(|m| format!("{} ({} {})", m.point, m.fstype, m.device))
        .collect();
    (read_only, writable.len())
}

/// Memory of the guest, from `/proc/meminfo`: available and total, KiB. `MemAvailable` where
/// the kernel has it (3.14 and later), else free + buffers + page cache.
pub fn memory(proc_meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        proc_meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = field("MemTotal").filter(|t| *t > 0)?;
    let available = field("MemAvailable")
        .or_else(|| Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0)))?;
    Some((available, total))
}

/// A serial console or a display of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// The chardev's label.
    pub label: String,
    /// Its backend as QEMU says it (`file`, `pty:/dev/pts/3`, `disconnected:unix:…`).
    pub backend: String,
    /// Whether the guest side has it open.
    pub open: bool,
}

/// The chardevs of `chardevs` (`query-chardev`) that the serial devices (`serial_chardevs`,
/// their `chardev` properties) use; a `null` backend is no console.
pub fn consoles(chardevs: &[qapi::qmp::ChardevInfo], serial_chardevs: &[String]) -> Vec<Console> {
    chardevs
        .iter()
        .filter(|c| serial_chardevs.contains(&c.label) && c.filename != "null")
        .map(|c| Console { label: c.label.clone(), backend: c.filename.clone(), open: c.frontend_open })
        .collect()
}

/// QOM types of the devices that carry a console.
pub const CONSOLE_DEVICES: &[&str] =
    &["child<isa-serial>", "child<pci-serial>", "child<virtconsole>", "child<spapr-vty>"];

/// Where QOM keeps devices: created from the command line without an id, with one, and by
/// the board.
pub const DEVICE_FOLDERS: &[&str] =
    &["/machine/peripheral", "/machine/peripheral-anon", "/machine/unattached"];

/// `console: serial ser0 (file, open); VNC 127.0.0.1:5900` or the like.
pub fn describe(consoles: &[Console], vnc: Option<&qapi::qmp::VncInfo>) -> String {
    let mut parts: Vec<String> = consoles
        .iter()
        .map(|c| format!("serial {} ({}, {})", c.label, c.backend, if c.open { "open" } else { "closed" }))
        .collect();
    match vnc {
        Some(v) if v.enabled => parts.push(format!(
            "VNC {}:{} ({} clients)",
            v.host.as_deref().unwrap_or("?"),
            v.service.as_deref().unwrap_or("?"),
            v.clients.as_ref().map_or(0, Vec::len)
        )),
        _ => parts.push("VNC off".to_owned()),
    }
    format!("console: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "rootfs / rootfs rw 0 0\n\
        proc /proc proc rw,relatime 0 0\n\
        /dev/vda /data ext4 ro,relatime 0 0\n\
        /dev/vdb1 /boot ext4 ro,relatime 0 0\n\
        /dev/sr0 /media/cd iso9660 ro,relatime 0 0\n\
        /dev/vdc /srv/my\\040disk xfs rw,relatime,attr2 0 0\n\
        tmpfs /run tmpfs rw,mode=755 0 0\n";

    #[test]
    fn writable_filesystems_mounted_read_only_are_named_unless_allowed() {
        let (ro, writable) = read_only_filesystems(MOUNTS, &["/boot".to_owned()]);
        assert_eq!(ro, vec!["/data (ext4 /dev/vda)".to_owned()]);
        // /data, /boot and the xfs one (its name unescaped); not the CD, not rootfs or tmpfs.
        assert_eq!(writable, 3);
        let (ro, _) = read_only_filesystems(MOUNTS, &[]);
        assert_eq!(ro.len(), 2, "{ro:?}");
        assert_eq!(mounts(MOUNTS)[5].point, "/srv/my disk");
    }

    #[test]
    fn memory_available_or_its_old_kernel_estimate() {
        let new = "MemTotal:         245000 kB\nMemFree:           10000 kB\nMemAvailable:     120000 kB\n";
        assert_eq!(memory(new), Some((120_000, 245_000)));
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        assert_eq!(memory(old), Some((400, 1000)));
        assert_eq!(memory("garbage"), None);
        assert_eq!(memory("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
    }

    #[test]
    fn consoles_are_the_serial_devices_chardevs() {
        let info = |label: &str, filename: &str, open: bool| qapi::qmp::ChardevInfo {
            label: label.to_owned(),
            filename: filename.to_owned(),
            frontend_open: open,
        };
        let chardevs = vec![
            info("ser0", "file", true),
            info("qmp0", "unix:/run/vm/qmp.sock,server=on", true),
            info("qga0", "disconnected:unix:/run/vm/qga.sock,server=on", false),
            info("ser1", "null", true),
        ];
        let found = consoles(&chardevs, &["ser0".to_owned(), "ser1".to_owned()]);
        assert_eq!(found, vec![Console { label: "ser0".to_owned(), backend: "file".to_owned(), open: true }]);
        assert_eq!(describe(&found, None), "console: serial ser0 (file, open); VNC off");
    }
}
