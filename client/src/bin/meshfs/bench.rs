//! `meshfs bench`: each workload's flags to its run in the library, then its table or JSON;
//! with `--local`, against a throw-away cluster of the config's servers.

use std::path::PathBuf;

use meshfs_client::bench::{limits, locks, meta, overwrite, rand, repair, seq, small};
use meshfs_client::cluster::local::LocalCluster;
use meshfs_client::{Access, ClientError};
use meshfs_group::Config;

use crate::args::{SeqArgs, Workload};

/// Runs `workload` against the cluster of `config`, or with `local` against a cluster of
/// its own, stopped and removed when this returns. The exit status.
pub(crate) fn run(
    config: &Config,
    access: &Access,
    local: bool,
    workload: Workload,
) -> Result<u8, ClientError> {
    let mut local_cluster = if local {
        let mut heal = Vec::new();
        if let Workload::Repair { repair_mbps, .. } = &workload {
            heal.push(("grace_secs", repair::BENCH_GRACE_SECS));
            if let Some(rate) = repair_mbps {
                heal.push(("repair_mbps", i64::try_from(*rate).unwrap_or(i64::MAX)));
            }
        }
        Some(LocalCluster::start_with(&config.path, Some(access.credentials.id), &heal, |line| {
            eprintln!("bench: {line}")
        })?)
    } else {
        None
    };
    let config = local_cluster.as_ref().map_or(config, |c| &c.config).clone();
    let config = &config;
    let access = local_cluster.as_ref().map_or(access, |c| &c.access).clone();
    let access = &access;
    let report = |line: &str| eprintln!("bench: {line}");
    match workload {
        Workload::Meta { clients, files, keep, phases, out } => {
            let limits = limits_if(config, out.with_limits, 256 << 20, out.json)?;
            let bench = meta::MetaBench { clients, files, keep, phases };
            let results = meta::run(access, &bench, report)?;
            if out.json {
                println!("{}", meta::to_json(&bench, &results, limits.as_ref()));
            } else {
                print!("{}", meta::render(&results));
                if let Some(limits) = &limits {
                    for r in results.iter().filter(|r| r.op == "create") {
                        println!(
                            "create, {} clients: {:.2} of the disk's 4 KiB appends + fdatasync",
                            r.clients,
                            r.ops_per_s / limits.append_fdatasync_per_s
                        );
                    }
                }
            }
        }
        Workload::Limits { dir, size, json } => {
            let dir = dir.unwrap_or_else(|| limits_dir(config));
            let measured = limits::measure(&dir, size, limits::TIME_BOUND, |step| {
                eprintln!("bench: measuring {step}")
            })?;
            if json {
                println!("{}", limits::to_json(&measured));
            } else {
                print!("{}", limits::render(&measured));
            }
        }
        Workload::Locks { pairs, clients, contended, json } => {
            let bench = locks::LockBench { pairs, clients, contended };
            let results = locks::run(access, &bench, report)?;
            if json {
                println!("{}", locks::to_json(&bench, &results));
            } else {
                print!("{}", locks::render(&results));
            }
        }
        Workload::Seqwrite { seq } => return seq_bench(config, access, seq, false),
        Workload::Seqread { seq } => return seq_bench(config, access, seq, true),
        Workload::Smallfile { files, size, clients, replication, keep, out } => {
            let limits = limits_if(config, out.with_limits, 256 << 20, out.json)?;
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let bench = small::SmallBench { files, size, clients, replication, keep };
            let results = small::run(access, &bench, report)?;
            if out.json {
                println!("{}", small::to_json(&bench, &results, limits.as_ref()));
            } else {
                print!("{}", small::render(&results));
            }
        }
        Workload::Randwrite { size, write, writes, replication, json } => {
            let bench = overwrite::OverwriteBench { size, write_sizes: write, writes, replication };
            let results = overwrite::run(access, &bench, report)?;
            if json {
                println!("{}", overwrite::to_json(&bench, &results));
            } else {
                print!("{}", overwrite::render(&results));
            }
        }
        Workload::Repair { size, files, readers, replication, repair_mbps, json } => {
            let Some(cluster) = local_cluster.as_mut() else {
                eprintln!("meshfs: bench repair kills a data-server: run it with --local");
                return Ok(2);
            };
            let bench = repair::RepairBench { size, files, readers, replication };
            let result = repair::run(cluster, &bench, report)?;
            let heal = meshfs_core::settings::Settings::of(config)?.heal;
            let rate = repair_mbps.or(Some(heal.repair_bytes_per_sec / 1_000_000));
            if json {
                println!("{}", repair::to_json(&bench, rate, &result));
            } else {
                print!("{}", repair::render(&result));
            }
        }
        Workload::Randread { size, reads, depth, replication, out } => {
            let limits = limits_if(config, out.with_limits, size.min(1 << 30), out.json)?;
            let bench = rand::RandBench { size, reads, depths: depth, replication };
            let results = rand::run(access, &bench, report)?;
            if out.json {
                println!("{}", rand::to_json(&bench, &results, limits.as_ref()));
            } else {
                print!("{}", rand::render(&results));
                if let Some(limit) = limits.as_ref().and_then(|l| l.random_read_4k_iops) {
                    for r in &results {
                        println!(
                            "qd{}: {:.2} of the disk's 4 KiB O_DIRECT reads",
                            r.depth,
                            r.iops / limit
                        );
                    }
                }
            }
        }
    }
    Ok(0)
}

/// Where the disk limits are measured by default: the first data-server's disk.
fn limits_dir(config: &Config) -> PathBuf {
    config
        .servers_of(meshfs_group::Role::DServer)
        .next()
        .and_then(|s| s.data_dir.parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The limits, measured now, when asked for (printed unless the output is JSON).
fn limits_if(
    config: &Config,
    wanted: bool,
    disk_bytes: u64,
    json: bool,
) -> Result<Option<limits::Limits>, ClientError> {
    if !wanted {
        return Ok(None);
    }
    let limits = limits::measure(&limits_dir(config), disk_bytes, limits::TIME_BOUND, |step| {
        eprintln!("bench: measuring {step}")
    })?;
    if !json {
        print!("{}", limits::render(&limits));
    }
    Ok(Some(limits))
}

fn seq_bench(
    config: &Config,
    access: &Access,
    seq: SeqArgs,
    read: bool,
) -> Result<u8, ClientError> {
    let limits = limits_if(config, seq.out.with_limits, seq.size.min(1 << 30), seq.out.json)?;
    let bench = seq::SeqBench {
        size: seq.size,
        files: seq.files.max(1),
        replication: seq.replication,
        read,
        keep: seq.keep,
    };
    let results = seq::run(config, access, &bench, |line| eprintln!("bench: {line}"))?;
    // seqread writes its files first; it reports the read.
    let shown: Vec<_> = results.into_iter().filter(|r| (r.workload == "seqread") == read).collect();
    if seq.out.json {
        for result in &shown {
            println!("{}", seq::to_json(&bench, result, limits.as_ref()));
        }
    } else {
        print!("{}", seq::render(&shown));
        if let Some(limits) = &limits {
            for r in &shown {
                let (limit, name) = if r.workload == "seqwrite" {
                    (limits.disk_write_fsync_mb_s, "disk write + fsync")
                } else {
                    (limits.disk_read_cold_mb_s, "disk cold read")
                };
                println!("{}: {:.2} of the {name} limit", r.workload, r.mb_s / limit);
            }
        }
    }
    Ok(0)
}
