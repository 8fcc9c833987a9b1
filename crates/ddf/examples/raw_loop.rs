//! The physical limit for `scripts/bench-compare`: a bare get/set loop on one TCP connection,
//! with no library in between.
//!
//! ```text
//! cargo run --release -p ddf --example raw_loop -- memcached 127.0.0.1:11211 20000
//! cargo run --release -p ddf --example raw_loop -- redis 127.0.0.1:6379 20000
//! ```
//! Prints one JSON line: operations per second, median and p99 latency of `set` and `get`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: raw_loop memcached|redis HOST:PORT [N]".into());
    }
    let (proto, addr) = (args[1].as_str(), args[2].as_str());
    let n: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let value = "x".repeat(100);
    let mut line = String::new();
    let mut req: Vec<u8> = Vec::with_capacity(256);
    let mut results = Vec::new();
    for op in ["set", "get"] {
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let key = format!("raw:{}", i % 1000);
            let t = Instant::now();
            line.clear();
            req.clear();
            // Each request is formatted into one buffer and sent with one write, as a client
            // library does; `write!` straight to the socket would send each piece separately.
            match (proto, op) {
                ("memcached", "set") => {
                    write!(req, "ms {key} {} T0\r\n{value}\r\n", value.len())?;
                    w.write_all(&req)?;
                    r.read_line(&mut line)?; // HD
                }
                ("memcached", _) => {
                    write!(req, "mg {key} v\r\n")?;
                    w.write_all(&req)?;
                    r.read_line(&mut line)?; // VA <len>
                    if let Some(rest) = line.strip_prefix("VA ") {
                        let len: usize = rest.split_whitespace().next().unwrap_or("0").parse()?;
                        let mut buf = vec![0u8; len + 2];
                        r.read_exact(&mut buf)?;
                    }
                }
                (_, "set") => {
                    write!(
                        req,
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                        key.len(),
                        value.len()
                    )?;
                    w.write_all(&req)?;
                    r.read_line(&mut line)?; // +OK
                }
                _ => {
                    write!(req, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())?;
                    w.write_all(&req)?;
                    r.read_line(&mut line)?; // $len
                    if let Some(len) = line.strip_prefix('$') {
                        let len: i64 = len.trim().parse()?;
                        if len >= 0 {
                            let mut buf = vec![0u8; len as usize + 2];
                            r.read_exact(&mut buf)?;
                        }
                    }
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        results.push(format!(
            "\"{op}\": {{\"ops_per_sec\": {:.1}, \"median_us\": {:.2}, \"p99_us\": {:.2}}}",
            n as f64 / secs,
            lat[n / 2],
            lat[n * 99 / 100]
        ));
    }
    println!("{{{}}}", results.join(", "));
    Ok(())
}
