//! `meshfs mount`: real clusters mounted through FUSE and used by ordinary programs (cp,
//! diff, mv, rm, cat). Each mount is a `meshfs mount --foreground` process of the test's,
//! unmounted and killed by its mount point and PID when the test ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshfs_client::mount::is_mounted;

use crate::cluster::{DEADLINE, TestCluster};
use crate::random_bytes;

/// A mount of a test cluster, served by a process of its own.
struct FuseMount {
    point: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl FuseMount {
    /// Mounts `cluster` on a new directory `name` of the cluster's, with entry and
    /// attribute timeouts of `timeout_ms`; waits (bounded) until the kernel lists it.
    fn new(cluster: &TestCluster, name: &str, timeout_ms: u64) -> FuseMount {
        FuseMount::with_config(cluster, &cluster.config_path, name, timeout_ms)
    }

    /// [`FuseMount::new`] as the client of config `config`.
    fn with_config(cluster: &TestCluster, config: &Path, name: &str, timeout_ms: u64) -> FuseMount {
        let point = cluster.dir.join(name);
        std::fs::create_dir_all(&point).unwrap();
        let log = cluster.dir.join(format!("{name}.log"));
        let timeout = timeout_ms.to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_meshfs"))
            .arg("--config")
            .arg(config)
            .args(["mount", "--foreground", "--entry-timeout-ms", &timeout])
            .args(["--attr-timeout-ms", &timeout])
            .arg(&point)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mount = FuseMount { point, log, child: Some(child) };
        let deadline = Instant::now() + DEADLINE;
        while !is_mounted(&mount.point) {
            let exited = mount.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the mount did not come up ({exited:?}): {}",
                mount.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.point.join(rel)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the serving process to exit by itself; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "the mount process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree of files of assorted sizes (empty, small, across several 1 MiB blocks) in
/// nested directories.
fn make_tree(root: &Path) {
    for d in 0..4u64 {
        let dir = root.join(format!("dir-{d}")).join("inner");
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..12u64 {
            let len = match f % 4 {
                0 => 0,
                1 => 17,
                2 => 4096 + f as usize,
                _ => (2 << 20) + 12_345 * f as usize,
            };
            std::fs::write(dir.join(format!("file-{f}")), random_bytes(len, d * 100 + f)).unwrap();
        }
    }
    std::fs::write(root.join("top"), b"top of the tree\n").unwrap();
}

fn started(name: &str) -> TestCluster {
    let mut cluster = TestCluster::new(name, 3, 3);
    cluster.start_all();
    cluster.wait_full_mesh();
    cluster
}

#[test]
fn a_tree_copied_into_a_mount_reads_back_identical_and_names_change_as_programs_ask() {
    let cluster = started("mount-tree");
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    let source = cluster.dir.join("source");
    make_tree(&source);
    run(Command::new("cp").arg("-r").arg(&source).arg(mount.path("copy")));
    run(Command::new("diff").arg("-r").arg(&source).arg(mount.path("copy")));
    // The namespace holds what the mount shows.
    let listed = run(Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["ls", "-l", "/copy/dir-3/inner"]));
    assert!(
        listed.contains("file-11") && listed.contains(&(2_097_152 + 135_795).to_string()),
        "{listed}"
    );
    // Renames and removes.
    run(Command::new("mv").arg(mount.path("copy/dir-0")).arg(mount.path("moved")));
    run(Command::new("diff").arg("-r").arg(source.join("dir-0")).arg(mount.path("moved")));
    assert!(!mount.path("copy/dir-0").exists());
    run(Command::new("rm").arg("-r").arg(mount.path("copy/dir-1")));
    assert!(!mount.path("copy/dir-1").exists());
    let names: Vec<String> = std::fs::read_dir(mount.path("copy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["dir-2", "dir-3", "top"]);
    let top = std::fs::read_dir(&mount.point).unwrap().count();
    assert_eq!(top, 2, "copy and moved, nothing else yet");
    // rename(2) replaces a file in one step, and an empty directory; never a full one.
    std::fs::write(mount.path("old"), b"old bytes").unwrap();
    std::fs::write(mount.path("new"), b"new bytes").unwrap();
    std::fs::rename(mount.path("new"), mount.path("old")).unwrap();
    assert_eq!(std::fs::read(mount.path("old")).unwrap(), b"new bytes");
    assert!(!mount.path("new").exists());
    std::fs::create_dir(mount.path("empty")).unwrap();
    std::fs::rename(mount.path("copy/dir-2"), mount.path("empty")).unwrap();
    run(Command::new("diff").arg("-r").arg(source.join("dir-2")).arg(mount.path("empty")));
    let err = std::fs::rename(mount.path("old"), mount.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(21), "EISDIR: {err}");
    let err = std::fs::rename(mount.path("empty"), mount.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(39), "ENOTEMPTY: {err}");
    // Errors are the errno a program expects.
    let err = std::fs::create_dir(mount.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(17), "EEXIST: {err}");
    let err = std::fs::remove_dir(mount.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(39), "ENOTEMPTY: {err}");
    let err = std::fs::remove_file(mount.path("moved/inner")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(21), "EISDIR: {err}");
    let err = std::fs::read(mount.path("nothing-here")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(2), "ENOENT: {err}");
    let long = "n".repeat(256);
    let err = std::fs::write(mount.path(&long), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(36), "ENAMETOOLONG: {err}");
    // A file unlinked while open reads and writes on through its descriptor, with no links,
    // and goes at its last close.
    {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::MetadataExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(mount.path("scratch"))
            .unwrap();
        file.write_all(b"before ").unwrap();
        std::fs::remove_file(mount.path("scratch")).unwrap();
        assert!(!mount.path("scratch").exists());
        assert_eq!(file.metadata().unwrap().nlink(), 0);
        file.write_all(b"and after").unwrap();
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "before and after");
        let names = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
        let listed = run(Command::new(env!("CARGO_BIN_EXE_meshfs"))
            .arg("--config")
            .arg(&cluster.config_path)
            .args(["ls", "/"]));
        assert!(listed.contains(".meshfs-unlinked-"), "kept under a hidden name: {listed}");
        assert_eq!(names(&mount.point), 4, "which this mount does not list");
        drop(file);
        let listed = run(Command::new(env!("CARGO_BIN_EXE_meshfs"))
            .arg("--config")
            .arg(&cluster.config_path)
            .args(["ls", "/"]));
        assert!(!listed.contains(".meshfs-unlinked-"), "gone at the last close: {listed}");
    }
    // Two open files of one file in one mount see each other's bytes at once.
    {
        use std::os::unix::fs::FileExt;
        let path = mount.path("shared");
        let a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let b = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        a.write_all_at(b"written by a", 0).unwrap();
        let mut buf = [0u8; 12];
        b.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"written by a");
        b.write_all_at(b"B", 11).unwrap();
        a.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"written by B");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 12);
    }
    // Capacity comes from the data-servers.
    let df = run(Command::new("df").arg("-B1").arg(&mount.point));
    assert!(df.contains("meshfs:"), "{df}");
}

#[test]
fn a_file_written_and_closed_on_one_mount_is_read_whole_on_another_and_renames_show() {
    let cluster = started("mount-two");
    let a = FuseMount::new(&cluster, "a", 200);
    let b = FuseMount::new(&cluster, "b", 200);
    let bytes = random_bytes((3 << 20) + 777, 7);
    std::fs::write(a.path("shared"), &bytes).unwrap();
    assert!(std::fs::read(b.path("shared")).unwrap() == bytes, "b reads what a wrote, whole");
    std::fs::rename(a.path("shared"), a.path("renamed")).unwrap();
    // Seen on b within the entry timeout (waited for, bounded).
    let deadline = Instant::now() + DEADLINE;
    while b.path("shared").exists() || !b.path("renamed").exists() {
        assert!(Instant::now() < deadline, "b never saw the rename");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read(b.path("renamed")).unwrap() == bytes);
    // A write through a file kept open shows on the other mount after close.
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(a.path("renamed")).unwrap();
    file.write_all(b"tail").unwrap();
    drop(file);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = std::fs::read(b.path("renamed")).unwrap();
        if seen.len() == bytes.len() + 4 {
            assert!(seen[..bytes.len()] == bytes[..] && &seen[bytes.len()..] == b"tail");
            break;
        }
        assert!(Instant::now() < deadline, "b never saw the appended bytes");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn meshfs_umount_and_sigterm_each_end_a_mount_and_its_process() {
    let cluster = started("mount-stop");
    let mut first = FuseMount::new(&cluster, "first", 1000);
    std::fs::write(first.path("kept"), b"still here").unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_meshfs")).arg("umount").arg(&first.point));
    assert!(first.wait_exit().success(), "{}", first.log_text());
    assert!(!is_mounted(&first.point));
    let mut second = FuseMount::new(&cluster, "second", 1000);
    assert_eq!(std::fs::read(second.path("kept")).unwrap(), b"still here");
    let pid = second.child.as_ref().unwrap().id();
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    assert!(second.wait_exit().success(), "{}", second.log_text());
    assert!(!is_mounted(&second.point), "SIGTERM unmounted it");
    // Unmounting what is not a mount says so.
    let out = Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("umount")
        .arg(&second.point)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a MeshFS mount"));
}

/// (modification time in ns, size) of every file under `root`, by path relative to it.
#[test]
fn hard_links_made_by_ln_cp_a_and_tar_share_one_inode_until_the_last_name_goes() {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let cluster = started("mount-links");
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    let meshfs = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshfs"));
        c.arg("--config").arg(&cluster.config_path);
        c
    };
    std::fs::create_dir(mount.path("a")).unwrap();
    std::fs::write(mount.path("a/f"), b"one file").unwrap();
    run(Command::new("ln").arg(mount.path("a/f")).arg(mount.path("g")));
    let (f, g) = (mount.path("a/f").metadata().unwrap(), mount.path("g").metadata().unwrap());
    assert_eq!((f.ino(), f.nlink()), (g.ino(), 2), "one inode, two names");
    // Bytes written through one name are read through the other, also while both are open.
    let mut by_g =
        std::fs::OpenOptions::new().read(true).write(true).open(mount.path("g")).unwrap();
    let mut by_f = std::fs::OpenOptions::new().read(true).open(mount.path("a/f")).unwrap();
    by_g.write_all(b"ONE").unwrap();
    let mut back = String::new();
    by_f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "ONE file");
    // The last name unlinked while open: the file lives on through its descriptors.
    std::fs::remove_file(mount.path("a/f")).unwrap();
    assert_eq!(mount.path("g").metadata().unwrap().nlink(), 1);
    std::fs::remove_file(mount.path("g")).unwrap();
    by_g.rewind().unwrap();
    back.clear();
    by_g.read_to_string(&mut back).unwrap();
    assert_eq!(back, "ONE file");
    drop((by_f, by_g));
    assert_eq!(std::fs::read_dir(&mount.point).unwrap().count(), 1, "only a/ is left");
    // meshfs ln from the command line; a directory gets no second name.
    std::fs::write(mount.path("a/h"), b"h").unwrap();
    run(meshfs().args(["ln", "/a/h", "/h2"]));
    assert_eq!(std::fs::read(mount.path("h2")).unwrap(), b"h");
    let stat = run(meshfs().args(["stat", "/h2"]));
    assert!(stat.contains("links       2"), "{stat}");
    let refused = meshfs().args(["ln", "/a", "/a2"]).output().unwrap();
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("cannot have a second name"), "{text}");
    let err = std::fs::hard_link(mount.path("a"), mount.path("a2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(1), "EPERM: {err}");
    // cp -a and tar keep a tree's hard links.
    let source = cluster.dir.join("linked");
    std::fs::create_dir_all(source.join("d")).unwrap();
    std::fs::write(source.join("x"), random_bytes(70_000, 3)).unwrap();
    std::fs::hard_link(source.join("x"), source.join("d/x2")).unwrap();
    std::fs::hard_link(source.join("x"), source.join("d/x3")).unwrap();
    run(Command::new("cp").arg("-a").arg(&source).arg(mount.path("cp")));
    let tarball = cluster.dir.join("linked.tar");
    run(Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&source).arg("."));
    std::fs::create_dir(mount.path("tar")).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(mount.path("tar")));
    for copy in ["cp", "tar"] {
        let x = mount.path(&format!("{copy}/x")).metadata().unwrap();
        let x3 = mount.path(&format!("{copy}/d/x3")).metadata().unwrap();
        assert_eq!((x.nlink(), x.ino()), (3, x3.ino()), "{copy}");
        run(Command::new("diff").arg("-r").arg(&source).arg(mount.path(copy)));
    }
    // Listings carry their entries' types and attributes (readdirplus): find walks by
    // them, ls -l shows them without asking entry by entry.
    std::os::unix::fs::symlink("x", mount.path("tar/sym")).unwrap();
    let found = run(Command::new("find").arg(mount.path("tar")).args(["-type", "f"]));
    assert_eq!(found.lines().count(), 3, "{found}");
    let found = run(Command::new("find").arg(mount.path("tar")).args(["-type", "l"]));
    assert_eq!(found.lines().count(), 1, "{found}");
    let listed = run(Command::new("ls").arg("-ln").arg(mount.path("tar")));
    assert!(listed.lines().any(|l| l.starts_with('l') && l.ends_with("sym -> x")), "{listed}");
    assert!(
        listed.lines().any(|l| l.starts_with("-rw") && l.contains(" 3 ") && l.ends_with(" x")),
        "{listed}"
    );
    // A tree removed with one name of a file in it: the file lives on under the other.
    run(Command::new("rm").arg("-r").arg(mount.path("cp/d")));
    assert_eq!(mount.path("cp/x").metadata().unwrap().nlink(), 1);
    assert_eq!(std::fs::read(mount.path("cp/x")).unwrap(), random_bytes(70_000, 3));
}

#[test]
fn user_attributes_through_a_mount_work_with_setfattr_getfattr_cp_a_and_rsync_x() {
    let cluster = started("mount-xattrs");
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    let file = mount.path("f");
    std::fs::write(&file, b"data").unwrap();
    run(Command::new("setfattr").args(["-n", "user.origin", "-v", "lab 3"]).arg(&file));
    run(Command::new("setfattr").args(["-n", "user.empty"]).arg(&file));
    let got = run(Command::new("getfattr").args(["--only-values", "-n", "user.origin"]).arg(&file));
    assert_eq!(got, "lab 3");
    let dump = run(Command::new("getfattr").args(["-d", "--absolute-names"]).arg(&file));
    assert!(dump.contains("user.origin=\"lab 3\"") && dump.contains("user.empty"), "{dump}");
    // Errors a program expects: no such attribute, not a user attribute, too large.
    let missing = Command::new("getfattr").args(["-n", "user.none"]).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && text.contains("No such attribute"), "{text}");
    let trusted = Command::new("setfattr").args(["-n", "trusted.x", "-v", "1"]).arg(&file).output();
    let text = String::from_utf8_lossy(&trusted.unwrap().stderr).into_owned();
    assert!(text.contains("not supported"), "{text}");
    let big = "a".repeat(66_000);
    let too_big = Command::new("setfattr").args(["-n", "user.big", "-v", &big]).arg(&file).output();
    assert!(!too_big.unwrap().status.success());
    run(Command::new("setfattr").args(["-x", "user.empty"]).arg(&file));
    let dump = run(Command::new("getfattr").args(["-d", "--absolute-names"]).arg(&file));
    assert!(!dump.contains("user.empty"), "{dump}");
    // They are the namespace's: another mount sees them.
    let other = FuseMount::new(&cluster, "other", 1000);
    let got = run(Command::new("getfattr")
        .args(["--only-values", "-n", "user.origin"])
        .arg(other.path("f")));
    assert_eq!(got, "lab 3");
    // cp -a and rsync -X carry them, into the mount and out of it.
    let local = cluster.dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("g"), b"g").unwrap();
    run(Command::new("setfattr").args(["-n", "user.k", "-v", "v1"]).arg(local.join("g")));
    run(Command::new("cp").arg("-a").arg(&local).arg(mount.path("cp")));
    let got = run(Command::new("getfattr")
        .args(["--only-values", "-n", "user.k"])
        .arg(mount.path("cp/g")));
    assert_eq!(got, "v1");
    run(Command::new("rsync")
        .args(["-aX"])
        .arg(format!("{}/", local.display()))
        .arg(mount.path("rs")));
    let got = run(Command::new("getfattr")
        .args(["--only-values", "-n", "user.k"])
        .arg(mount.path("rs/g")));
    assert_eq!(got, "v1");
    let back = cluster.dir.join("back");
    run(Command::new("cp").arg("-a").arg(&file).arg(&back));
    let got = run(Command::new("getfattr").args(["--only-values", "-n", "user.origin"]).arg(&back));
    assert_eq!(got, "lab 3");
}

/// Writes `len` pseudo-random bytes (seeded) to `path`, a MiB at a time.
fn write_random_file(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for (i, at) in (0..len).step_by(1 << 20).enumerate() {
        out.write_all(&random_bytes((len - at).min(1 << 20), seed + i as u64)).unwrap();
    }
    out.flush().unwrap();
}

#[test]
fn a_data_server_killed_during_a_1_gib_cp_into_the_mount_loses_nothing_written() {
    const SIZE: usize = 1 << 30;
    let mut cluster = TestCluster::new("mount-kill", 3, 3);
    cluster.set_replication(2);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    let source = cluster.dir.join("source.bin");
    write_random_file(&source, SIZE, 77);
    let target = mount.path("big.bin");
    let mut cp =
        Command::new("cp").arg(&source).arg(&target).stderr(Stdio::piped()).spawn().unwrap();
    // A quarter in, a data-server of the cluster dies at once.
    let deadline = Instant::now() + DEADLINE * 4;
    while std::fs::metadata(&target).map_or(0, |m| m.len()) < SIZE as u64 / 4 {
        assert!(Instant::now() < deadline, "the copy did not get a quarter in");
        assert!(cp.try_wait().unwrap().is_none(), "cp ended before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = *cluster.ids().last().unwrap();
    cluster.kill9(victim);
    let status = cp.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut cp.stderr.take().unwrap(), &mut stderr).unwrap();
    // Either way, what the mount holds is what was sent: the whole file, or (if the copy
    // failed, with EIO) a prefix of it. Read back from the data-servers' disks.
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let held = std::fs::metadata(&target).unwrap().len() as usize;
    if status.success() {
        assert_eq!(held, SIZE, "cp succeeded: the whole file");
    } else {
        assert!(stderr.contains("Input/output error"), "a failed copy says EIO: {stderr}");
    }
    use std::io::Read;
    let (mut a, mut b) =
        (std::fs::File::open(&source).unwrap(), std::fs::File::open(&target).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0;
    while at < held {
        let n = (held - at).min(1 << 20);
        a.read_exact(&mut x[..n]).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        assert!(x[..n] == y[..n], "the bytes at {at} differ from the source's");
        at += n;
    }
    assert!(status.success(), "with a second copy of every block the copy completes: {stderr}");
}

fn tree_times(root: &Path) -> Vec<(String, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            out.push((rel, ns, if meta.is_dir() { 0 } else { meta.len() }));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn times_are_kept_to_the_microsecond_so_cp_a_tar_and_rsync_work() {
    let cluster = started("mount-times");
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    // touch -d: microseconds kept (the kernel's nanoseconds cut to them).
    run(Command::new("touch").args(["-d", "2001-02-03 04:05:06.789012345"]).arg(mount.path("t")));
    let shown = run(Command::new("stat").args(["-c", "%y"]).arg(mount.path("t")));
    assert!(shown.starts_with("2001-02-03 04:05:06.789012000"), "{shown}");
    let source = cluster.dir.join("source");
    make_tree(&source);
    // Microsecond times on the source, as a filesystem of nanoseconds would hand them over.
    let micro = |t: i128| t - t % 1000;
    let want: Vec<_> = tree_times(&source).into_iter().map(|(p, t, n)| (p, micro(t), n)).collect();
    run(Command::new("cp").arg("-a").arg(&source).arg(mount.path("cp-a")));
    let got: Vec<_> = tree_times(&mount.path("cp-a"));
    assert!(got == want, "cp -a keeps every time and size:\n{got:?}\n{want:?}");
    let tar = Command::new("tar").arg("-C").arg(&source).args(["-cf", "-", "."]).output().unwrap();
    assert!(tar.status.success());
    std::fs::create_dir(mount.path("tar")).unwrap();
    let mut untar = Command::new("tar")
        .arg("-C")
        .arg(mount.path("tar"))
        .args(["-xf", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    untar.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(untar.wait().unwrap().success(), "tar x sets times without a complaint");
    run(Command::new("diff").arg("-r").arg(&source).arg(mount.path("tar")));
    // rsync -a twice: the second finds every file the same and sends nothing.
    let rsync = |dest: &str| {
        run(Command::new("rsync")
            .args(["-a", "--stats"])
            .arg(format!("{}/", source.display()))
            .arg(mount.path(dest)))
    };
    let first = rsync("rs");
    assert!(first.contains("Number of regular files transferred: 49"), "{first}");
    let second = rsync("rs");
    assert!(second.contains("Number of regular files transferred: 0"), "{second}");
    run(Command::new("diff").arg("-r").arg(&source).arg(mount.path("rs")));
}

#[test]
fn truncation_shrinks_grows_with_zeros_and_lets_programs_overwrite_files() {
    let cluster = started("mount-truncate");
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    let bytes = random_bytes((3 << 20) + 100, 11);
    let f = mount.path("f");
    std::fs::write(&f, &bytes).unwrap();
    // Shrink into the middle of the second 1 MiB block, then grow past the old end: what
    // was cut reads as zeros, never as the old bytes.
    let cut = (1 << 20) + (1 << 19);
    run(Command::new("truncate").args(["-s", &cut.to_string()]).arg(&f));
    assert_eq!(std::fs::metadata(&f).unwrap().len(), cut as u64);
    let grown = 4 << 20;
    run(Command::new("truncate").args(["-s", &grown.to_string()]).arg(&f));
    let seen = std::fs::read(&f).unwrap();
    assert_eq!(seen.len(), grown);
    assert!(seen[..cut] == bytes[..cut], "the kept bytes are intact");
    assert!(seen[cut..].iter().all(|&b| b == 0), "the cut and the growth read as zeros");
    // The namespace agrees: 4 blocks of 1 MiB.
    let stat = run(Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["stat", "/f"]));
    assert!(stat.contains(&format!("size        {grown} bytes")), "{stat}");
    // A shell's > and cp over a bigger file leave exactly the new bytes.
    run(Command::new("sh").arg("-c").arg(format!("echo new > {}", f.display())));
    assert_eq!(std::fs::read(&f).unwrap(), b"new\n");
    let small = cluster.dir.join("small");
    std::fs::write(&small, b"small file").unwrap();
    std::fs::write(mount.path("big"), &bytes).unwrap();
    run(Command::new("cp").arg(&small).arg(mount.path("big")));
    assert_eq!(std::fs::read(mount.path("big")).unwrap(), b"small file");
    // Grown past what its last block holds, by truncate or by a write past that block: the
    // gap reads as zeros (a replica holds only what was written to it; before, reading the
    // gap was refused, and fsx -S 2's mapwrite died of SIGBUS there).
    std::fs::write(mount.path("short"), b"0123456789").unwrap();
    run(Command::new("truncate").args(["-s", "300000"]).arg(mount.path("short")));
    let seen = std::fs::read(mount.path("short")).unwrap();
    assert!(
        seen.len() == 300_000 && &seen[..10] == b"0123456789" && seen[10..].iter().all(|&b| b == 0)
    );
    std::fs::write(mount.path("sparse"), b"0123456789").unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(mount.path("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_at(&file, b"far", 3 << 20).unwrap();
    drop(file);
    let seen = std::fs::read(mount.path("sparse")).unwrap();
    assert_eq!(seen.len(), (3 << 20) + 3);
    assert!(&seen[..10] == b"0123456789" && seen[10..3 << 20].iter().all(|&b| b == 0));
    assert_eq!(&seen[3 << 20..], b"far");
    // Through an open file too (ftruncate), and its reads see the new size.
    let file = std::fs::OpenOptions::new().read(true).write(true).open(mount.path("big")).unwrap();
    file.set_len(5).unwrap();
    drop(file);
    assert_eq!(std::fs::read(mount.path("big")).unwrap(), b"small");
}

#[test]
fn a_trusted_mount_acts_for_each_local_user_and_an_operators_root_is_an_operator() {
    let mut cluster = TestCluster::new("mount-users", 3, 3);
    let add = |name: &str, extra: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_meshfs"))
            .arg("--config")
            .arg(&cluster.config_path)
            .args(["client", "add", name, "--trusted"])
            .args(extra));
        cluster.dir.join(format!("client-{name}.conf"))
    };
    let operator = add("host", &["--admin"]);
    let plain = add("desk", &[]);
    cluster.start_all();
    cluster.wait_full_mesh();
    let mount = FuseMount::with_config(&cluster, &operator, "mnt", 1000);
    // Root here is root there: its files are 0:0, and it may give them away.
    std::fs::create_dir(mount.path("home")).unwrap();
    std::fs::set_permissions(
        mount.path("home"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(mount.path("home/root-file"), b"r").unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(mount.path("home/root-file")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    run(Command::new("chown").arg("4321:4321").arg(mount.path("home/root-file")));
    assert_eq!(std::fs::metadata(mount.path("home/root-file")).unwrap().uid(), 4321);
    std::fs::create_dir(mount.path("home/u1234")).unwrap();
    run(Command::new("chown").arg("1234:1234").arg(mount.path("home/u1234")));
    // Any other user is themselves: 1234 writes in their own directory only.
    let as_user = |uid: &str, script: String| {
        Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--clear-groups", "sh", "-c"])
            .arg(script)
            .output()
            .unwrap()
    };
    let own = as_user("1234", format!("echo mine > {}", mount.path("home/u1234/f").display()));
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    let meta = std::fs::metadata(mount.path("home/u1234/f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 1234), "made by the user who called");
    let other = as_user("1234", format!("echo no > {}", mount.path("home/not-yours").display()));
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("Permission denied"));
    let give = as_user("1234", format!("chown 0 {}", mount.path("home/u1234/f").display()));
    assert!(!give.status.success(), "a user may not give a file away");
    drop(mount);
    // A trusted client that is not an operator's: root there is just uid 0.
    let mount = FuseMount::with_config(&cluster, &plain, "desk", 1000);
    std::fs::write(mount.path("home/root-again"), b"x").unwrap();
    let out =
        Command::new("chown").arg("4321").arg(mount.path("home/root-again")).output().unwrap();
    assert!(!out.status.success(), "uid 0 without an operator's powers gives nothing away");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
    let err = std::fs::write(mount.path("home/u1234/f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(13), "EACCES: another user's file: {err}");
}

/// The pjdfstest cases a mount may fail, from `tests/pjdfstest/known-failures.txt`.
/// The pjdfstest cases the mount does not pass, each with how it ends (FAILED or skipped):
/// `tests/pjdfstest/known-failures.txt`, one per line, the reason after '#'.
fn known_failures() -> std::collections::BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest/known-failures.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, result) = line.split_once(char::is_whitespace).expect("case and result");
            (name.to_string(), result.trim().to_string())
        })
        .collect()
}

#[test]
fn pjdfstest_passes_on_a_mount_but_for_the_known_failures() {
    let mut cluster = TestCluster::new("mount-pjdfstest", 3, 3);
    run(Command::new(env!("CARGO_BIN_EXE_meshfs"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["client", "add", "host", "--trusted", "--admin"]));
    let host = cluster.dir.join("client-host.conf");
    cluster.start_all();
    cluster.wait_full_mesh();
    let mount = FuseMount::with_config(&cluster, &host, "mnt", 1000);
    let under = mount.path("pjd");
    std::fs::create_dir(&under).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest/pjdfstest.toml");
    // A directory on another filesystem (the cluster's, on the local disk): link and rename
    // across to it must fail with EXDEV, from the kernel.
    let secondary = cluster.dir.join("secondary");
    std::fs::create_dir(&secondary).unwrap();
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(&config)
        .arg("-s")
        .arg(&secondary)
        .arg("-p")
        .arg(&under)
        .current_dir(&under)
        .output()
        .expect("pjdfstest runs (cargo install pjdfstest; it needs Debian's libacl1-dev)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut results = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(result), None) = (words.next(), words.next(), words.next())
            && name.contains("::")
            && ["ok", "FAILED", "skipped"].contains(&result)
        {
            results.insert(name.to_string(), result.to_string());
        }
    }
    assert_eq!(results.len(), 398, "every case ran and reported:\n{text}");
    let not_passed: std::collections::BTreeMap<String, String> =
        results.iter().filter(|(_, r)| *r != "ok").map(|(n, r)| (n.clone(), r.clone())).collect();
    let known = known_failures();
    let new: Vec<_> = not_passed.iter().filter(|(n, r)| known.get(*n) != Some(r)).collect();
    let fixed: Vec<_> = known.iter().filter(|(n, r)| not_passed.get(*n) != Some(r)).collect();
    assert!(new.is_empty(), "cases that fail or skip and are not listed so: {new:?}\n{text}");
    assert!(fixed.is_empty(), "listed cases that now end otherwise (update the list): {fixed:?}");
    let failed = not_passed.values().filter(|r| *r == "FAILED").count();
    println!(
        "pjdfstest: {} passed, {failed} failed, {} skipped (all listed)",
        398 - not_passed.len(),
        not_passed.len() - failed
    );
}

/// fsx's ops on one file through a mount, seeded; panics with its report unless clean.
fn fsx(mount: &FuseMount, dir: &Path, name: &str, ops: u32, seed: u32) -> Duration {
    let started = Instant::now();
    let out = Command::new("fsx")
        .args(["-N", &ops.to_string(), "-S", &seed.to_string(), "-P"])
        .arg(dir)
        .arg(mount.path(name))
        .output()
        .expect("fsx runs (cargo install fsx)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("All operations completed A-OK!"),
        "fsx -S {seed}:\n{text}"
    );
    started.elapsed()
}

#[test]
fn fsx_runs_clean_through_a_mount_also_with_the_page_caches_dropped_halfway() {
    const OPS: u32 = 1500;
    let cluster = started("mount-fsx");
    let mount = FuseMount::new(&cluster, "mnt", 1000);
    let artifacts = cluster.dir.join("fsx");
    std::fs::create_dir(&artifacts).unwrap();
    let took = fsx(&mount, &artifacts, "one", OPS, 1);
    println!("fsx: {OPS} operations in {took:?}");
    // Again on a new file; half way through, the kernel drops every clean page (the
    // data-servers' replicas among them), so reads come from their disks.
    let half = took / 2;
    let dropper = std::thread::spawn(move || {
        std::thread::sleep(half);
        let _ = Command::new("sync").status();
        std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
    });
    fsx(&mount, &artifacts, "two", OPS, 2);
    assert!(dropper.join().unwrap(), "the page caches were dropped");
}
