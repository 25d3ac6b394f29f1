//! rk's own pod sandbox ("pause") image, made by rk and never pulled.
//!
//! The sandbox container only has to exist and hold the pod's namespaces, so its
//! program is a hand-assembled static ELF of a few dozen bytes that sleeps forever
//! (containerd stops sandboxes with SIGKILL). Building it here means a node needs no
//! registry and no image file to run its first pod.

use super::image::{FileEntry, ImageSpec};

/// The name the sandbox image is imported under and containerd is configured with.
pub const PAUSE_IMAGE: &str = "rk.local/pause:1";

/// The machine code of the loop, for the architectures rk builds for.
fn code(arch: &str) -> Option<(u16, Vec<u8>)> {
    match arch {
        // loop: mov eax, 34 (pause); syscall; jmp loop
        "x86_64" => Some((62, vec![0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7])),
        // loop: x0..x3 = 0; x8 = 73 (ppoll: no fds, no timeout); svc #0; b loop
        "aarch64" => {
            let words: [u32; 7] =
                [0xd280_0000, 0xd280_0001, 0xd280_0002, 0xd280_0003, 0xd280_0928, 0xd400_0001, 0x17ff_fffa];
            Some((183, words.iter().flat_map(|w| w.to_le_bytes()).collect()))
        }
        _ => None,
    }
}

/// A static ELF64 executable: one header, one loadable segment, then the code.
pub fn pause_elf(arch: &str) -> Option<Vec<u8>> {
    let (machine, code) = code(arch)?;
    const BASE: u64 = 0x40_0000;
    const EH: u64 = 64;
    const PH: u64 = 56;
    let entry = BASE + EH + PH;
    let total = (EH + PH) as usize + code.len();
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, little endian, v1, SysV
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    b.extend_from_slice(&entry.to_le_bytes());
    b.extend_from_slice(&EH.to_le_bytes()); // program headers right after this header
    b.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    b.extend_from_slice(&(EH as u16).to_le_bytes());
    b.extend_from_slice(&(PH as u16).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // one program header
    b.extend_from_slice(&[0; 6]); // no section headers, no string table
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // R + X
    b.extend_from_slice(&0u64.to_le_bytes()); // from file offset 0
    b.extend_from_slice(&BASE.to_le_bytes());
    b.extend_from_slice(&BASE.to_le_bytes());
    b.extend_from_slice(&(total as u64).to_le_bytes());
    b.extend_from_slice(&(total as u64).to_le_bytes());
    b.extend_from_slice(&0x1000u64.to_le_bytes());
    b.extend_from_slice(&code);
    Some(b)
}

/// The sandbox image for this machine's architecture.
pub fn pause_image() -> Option<ImageSpec> {
    let elf = pause_elf(std::env::consts::ARCH)?;
    Some(ImageSpec {
        name: PAUSE_IMAGE.to_string(),
        files: vec![FileEntry::file("pause", 0o755, elf)],
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
        env: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ELF really runs: spawn it, see it stay alive, kill it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn pause_binary_sleeps_until_killed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        std::fs::write(&path, pause_elf("x86_64").unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "pause exited on its own");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
}
