//! `cargo bench --bench sizes`: throughput over item size, 64 B to 64 MiB, for procq (a
//! channel and a `Queue`, items holding a [`procq::SharedBytes`]), hand-rolled tokio framing
//! (`UnixStream` + `LengthDelimitedCodec` + postcard) and Python's `multiprocessing.Queue`,
//! all in one run, with the machine's memory-copy bandwidth measured in the same run.
//!
//! Prints a markdown table (items/s, GB/s, procq's ratio to Python) and draws the log-log
//! chart the README shows, `docs/throughput-by-size.svg` (or where `PROCQ_BENCH_CHART`
//! says).
//!
//! Every row moves items from one process to another: this binary re-runs itself with
//! `PROCQ_BENCH_ROLE` naming the part a child plays. The receiving side takes each item
//! whole (procq's receiver gets its bytes in place, in the mapping of the sender's memfd;
//! the tokio and Python receivers get a copy, as those designs must) and checks its length;
//! none of them reads every byte.
//!
//! Environment: `PROCQ_BENCH_RUNS` (best of, default 3), `PROCQ_BENCH_PYTHON=0` to skip
//! the Python rows, `PROCQ_BENCH_SCALE` (percent of the default item counts, default 100),
//! `PROCQ_BENCH_SIZES` (comma-separated sizes in bytes, for a partial run: no chart).

use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use procq::SharedBytes;

mod common;
use common::{best, child_cmd, env_number, runs, say, Kid};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// The item sizes measured: the payload's length (postcard adds a length prefix).
const SIZES: [usize; 6] = [64, 512, 4 * KIB, 64 * KIB, MIB, 64 * MIB];
/// The largest frame the tokio receiver accepts: room for the largest item.
const MAX_FRAME: usize = 65 * MIB;

/// How many items a row moves: about 1 GiB, at least 48 and at most 1,000,000 (Python
/// moves a fifth of that, at least 16: it is that much slower), scaled by
/// `PROCQ_BENCH_SCALE`.
///
/// The floors are for the 64 MiB row, which would otherwise move 16 items (3 for Python):
/// there the first items of a run still pay for memory the machine has not handed out
/// lately (on this VM a page freed for a while goes back to the host and faults in again),
/// and the last item's receive runs after the sender is done. At 16 items procq's rows
/// read about 8% lower than at 48; at 48 a row runs for more than a second and shows the
/// steady state, Python's too.
fn count(size: usize, python: bool) -> usize {
    let n = (1usize << 30) / size;
    let (n, floor) = if python {
        ((n / 5).min(200_000), 16)
    } else {
        (n.min(1_000_000), 48)
    };
    let scale = env_number("PROCQ_BENCH_SCALE").unwrap_or(100);
    (n * scale / 100).max(floor)
}

fn main() {
    common::run(|role| async move { child(&role).await }, parent);
}

fn env_usize(name: &str) -> usize {
    env_number(name).unwrap_or_else(|| panic!("{name} not set"))
}

async fn child(role: &str) {
    let (count, size) = (env_usize("COUNT"), env_usize("SIZE"));
    match role {
        "procq-channel" => {
            let rx = procq::Receiver::<SharedBytes>::from_env("BENCH").unwrap();
            say("ready");
            for _ in 0..count {
                assert_eq!(rx.recv().await.unwrap().len(), size);
            }
            say("done");
        }
        "procq-queue" => {
            let q = procq::Queue::<SharedBytes>::from_env("BENCH").unwrap();
            q.close(); // this process only gets
            say("ready");
            for _ in 0..count {
                assert_eq!(q.get().await.unwrap().len(), size);
            }
            say("done");
        }
        "tokio" => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(std).unwrap();
            let mut framed = tokio_util::codec::FramedRead::new(stream, codec());
            say("ready");
            for _ in 0..count {
                let frame = framed.next().await.unwrap().unwrap();
                let item: serde_bytes::ByteBuf = postcard::from_bytes(&frame).unwrap();
                assert_eq!(item.len(), size);
            }
            say("done");
        }
        other => panic!("unknown role {other}"),
    }
}

fn codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// One row of the table: a system's items per second at each size.
struct Series {
    name: &'static str,
    rates: Vec<f64>,
}

async fn parent() {
    let runs = runs();
    let python = std::env::var("PROCQ_BENCH_PYTHON").as_deref() != Ok("0");
    println!("procq item-size benchmark: best of {runs}, one process to another");
    let memcpy = memcpy_gbps(runs);
    let memfd_write = memfd_write_gbps(runs);
    let mut series = vec![
        Series {
            name: "procq channel",
            rates: Vec::new(),
        },
        Series {
            name: "procq Queue",
            rates: Vec::new(),
        },
        Series {
            name: "tokio UnixStream + LengthDelimitedCodec + postcard",
            rates: Vec::new(),
        },
    ];
    if python {
        series.push(Series {
            name: "Python multiprocessing.Queue",
            rates: Vec::new(),
        });
    }
    let sizes: Vec<usize> = match std::env::var("PROCQ_BENCH_SIZES") {
        Ok(list) => list.split(',').map(|s| s.trim().parse().unwrap()).collect(),
        Err(_) => SIZES.to_vec(),
    };
    for &size in &sizes {
        let n = count(size, false);
        series[0]
            .rates
            .push(best(runs, || procq_rate("procq-channel", n, size)).await);
        series[1]
            .rates
            .push(best(runs, || procq_rate("procq-queue", n, size)).await);
        series[2]
            .rates
            .push(best(runs, || tokio_rate(n, size)).await);
        if python {
            let n = count(size, true);
            series[3]
                .rates
                .push(best(runs, || python_rate(n, size)).await);
        }
        eprintln!("measured {}", human(size));
    }

    println!();
    println!("memory copy in one process (64 MiB `copy_from_slice`): {memcpy:.1} GB/s");
    println!(
        "64 MiB written into a fresh memfd (what a large item's sender must do): {memfd_write:.2} GB/s"
    );
    println!();
    print!("| item size |");
    for s in &series {
        print!(" {} |", s.name);
    }
    if python {
        print!(" procq channel ÷ Python | procq Queue ÷ Python |");
    }
    println!();
    print!("|---|");
    for _ in 0..series.len() + if python { 2 } else { 0 } {
        print!("---:|");
    }
    println!();
    for (i, &size) in sizes.iter().enumerate() {
        print!("| {} |", human(size));
        for s in &series {
            let rate = s.rates[i];
            print!(" {} items/s, {:.2} GB/s |", group(rate), gbps(rate, size));
        }
        if python {
            let py = series[3].rates[i];
            print!(
                " {:.1}× | {:.1}× |",
                series[0].rates[i] / py,
                series[1].rates[i] / py
            );
        }
        println!();
    }
    if sizes != SIZES {
        return; // a partial run: no chart
    }
    let big = SIZES.len() - 1;
    println!();
    let big_gbps = gbps(series[0].rates[big], SIZES[big]);
    println!(
        "64 MiB items: procq channel {big_gbps:.2} GB/s = {:.0}% of memory copy, {:.0}% of a bare memfd write",
        100.0 * big_gbps / memcpy,
        100.0 * big_gbps / memfd_write
    );

    let path = std::env::var("PROCQ_BENCH_CHART").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/throughput-by-size.svg").to_string()
    });
    draw_chart(&path, &series, memcpy, memfd_write).expect("chart");
    println!("chart: {path}");
}

/// Items per second from this process into a child, through a procq channel or queue.
async fn procq_rate(role: &str, n: usize, size: usize) -> f64 {
    let item = SharedBytes::from(vec![7u8; size]);
    let mut cmd = child_cmd(role);
    cmd.env("COUNT", n.to_string())
        .env("SIZE", size.to_string());
    let mut kid;
    let start;
    if role == "procq-channel" {
        let mut opts = procq::Options::new();
        if let Some(d) = env_number("PROCQ_BENCH_DATAGRAM") {
            opts = opts.datagram_bytes(d);
        }
        let (tx, rx) = opts.channel::<SharedBytes>().unwrap();
        procq::pass(&mut cmd, "BENCH", rx).unwrap();
        kid = Kid::spawn(cmd);
        assert_eq!(kid.line().await, "ready");
        start = Instant::now();
        for _ in 0..n {
            tx.send(item.clone()).await.unwrap();
        }
        tx.flush().await.unwrap();
    } else {
        let q = procq::Queue::<SharedBytes>::new().unwrap();
        procq::pass(&mut cmd, "BENCH", q.clone()).unwrap();
        kid = Kid::spawn(cmd);
        assert_eq!(kid.line().await, "ready");
        start = Instant::now();
        for _ in 0..n {
            q.put(item.clone()).await.unwrap();
        }
        q.flush().await.unwrap();
    }
    assert_eq!(kid.line().await, "done");
    let elapsed = start.elapsed();
    kid.finish().await;
    n as f64 / elapsed.as_secs_f64()
}

/// Items per second through a `UnixStream` with length-delimited postcard frames.
async fn tokio_rate(n: usize, size: usize) -> f64 {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = child_cmd("tokio");
    cmd.env("COUNT", n.to_string())
        .env("SIZE", size.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)));
    let mut kid = Kid::spawn(cmd);
    assert_eq!(kid.line().await, "ready");
    mine.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(mine).unwrap();
    let mut framed = tokio_util::codec::FramedWrite::new(stream, codec());
    let payload = serde_bytes::ByteBuf::from(vec![7u8; size]);
    let start = Instant::now();
    for _ in 0..n {
        let bytes = postcard::to_stdvec(&payload).unwrap();
        framed.feed(bytes::Bytes::from(bytes)).await.unwrap();
    }
    SinkExt::<bytes::Bytes>::flush(&mut framed).await.unwrap();
    assert_eq!(kid.line().await, "done");
    let elapsed = start.elapsed();
    drop(framed);
    kid.finish().await;
    n as f64 / elapsed.as_secs_f64()
}

/// Items per second through Python's `multiprocessing.Queue` (`benches/mp_sizes.py`).
async fn python_rate(n: usize, size: usize) -> f64 {
    common::python("mp_sizes.py", &[n.to_string(), size.to_string()]).await
}

/// GB/s of one `copy_from_slice` of 64 MiB between two buffers already in memory: the
/// ceiling for any design that copies an item once.
fn memcpy_gbps(runs: usize) -> f64 {
    let src = vec![7u8; 64 * MIB];
    let mut dst = vec![0u8; 64 * MIB];
    let mut best = 0f64;
    for _ in 0..runs.max(3) * 4 {
        let start = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.max(src.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// GB/s of writing 64 MiB into a new memfd (and nothing else): every page is a fresh
/// shmem page the kernel allocates and charges. The ceiling for a sender that hands each
/// large item over in a memfd of its own.
fn memfd_write_gbps(runs: usize) -> f64 {
    use std::io::Write;
    let src = vec![7u8; 64 * MIB];
    let mut best = 0f64;
    for _ in 0..runs.max(3) * 2 {
        let fd = rustix::fs::memfd_create("bench", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        let start = Instant::now();
        file.write_all(&src).unwrap();
        best = best.max(src.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn gbps(items_per_sec: f64, size: usize) -> f64 {
    items_per_sec * size as f64 / 1e9
}

/// `64 B`, `4 KiB`, `64 MiB`.
fn human(size: usize) -> String {
    match size {
        s if s >= MIB => format!("{} MiB", s / MIB),
        s if s >= KIB => format!("{} KiB", s / KIB),
        s => format!("{s} B"),
    }
}

/// `1,234,567`, or `6.4` below ten.
fn group(rate: f64) -> String {
    if rate < 10.0 {
        return format!("{rate:.1}");
    }
    let digits = format!("{rate:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The log-log chart of GB/s over item size, one line per system; memory copy and a bare
/// memfd write as dashed ceilings.
fn draw_chart(
    path: &str,
    series: &[Series],
    memcpy: f64,
    memfd_write: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let points = |s: &Series| -> Vec<(f64, f64)> {
        SIZES
            .iter()
            .zip(&s.rates)
            .map(|(&size, &rate)| (size as f64, gbps(rate, size)))
            .collect()
    };
    let lowest = series
        .iter()
        .flat_map(points)
        .map(|(_, g)| g)
        .fold(f64::MAX, f64::min);
    let y_low = 10f64.powf(lowest.log10().floor());
    let y_high = 10f64.powf(memcpy.log10().ceil());

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput over item size, one process to another",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (32f64..128.0 * MIB as f64).log_scale(),
            (y_low..y_high).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("item size (bytes, log scale)")
        .y_desc("GB/s (log scale)")
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    let colors = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
    ];
    for (s, &color) in series.iter().zip(colors.iter()) {
        let pts = points(s);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    let ceilings = [
        (
            memcpy,
            RGBColor(0x70, 0x70, 0x70),
            format!("memory copy, same run ({memcpy:.1} GB/s)"),
        ),
        (
            memfd_write,
            RGBColor(0x94, 0x67, 0xbd),
            format!("64 MiB written into a fresh memfd, same run ({memfd_write:.1} GB/s)"),
        ),
    ];
    for (gbps, color, label) in ceilings {
        chart
            .draw_series(DashedLineSeries::new(
                [32f64, 128.0 * MIB as f64].into_iter().map(|x| (x, gbps)),
                8,
                6,
                color.stroke_width(1),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `100 B`, `10 kB`, `1 MB`: the axis labels at powers of ten.
fn si(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.0} MB", v / 1e6),
        v if v >= 1e3 => format!("{:.0} kB", v / 1e3),
        v => format!("{v:.0} B"),
    }
}
