//! ureq over a unix socket: the CLI's way to the daemon's `[server] socket`.
//!
//! ureq speaks HTTP over any [`Transport`]; this one is a connected `UnixStream`. The URL's host
//! is only the `Host` header (`localhost`); the socket path says where to connect.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};
use ureq::Error;

/// Connects every request to one unix socket.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    pub path: PathBuf,
}

impl<In: Transport> Connector<In> for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        let stream = Arc::new(Socket(UnixStream::connect(&self.path)?));
        // So that `Agent::shutdown` (a closed event stream) interrupts a read blocked on it.
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        let config = details.config;
        Ok(Some(UnixTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        }))
    }
}

/// The connected socket, shared with the agent's shutdown handle.
#[derive(Debug)]
struct Socket(UnixStream);

impl ShutdownHandle for Socket {
    fn shutdown(&self) {
        // An error means it is closed already.
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// One connection to the socket.
#[derive(Debug)]
pub struct UnixTransport {
    stream: Arc<Socket>,
    buffers: LazyBuffers,
}

/// A ureq timeout as a socket timeout; `None` waits as long as it takes (a followed log).
fn socket_timeout(timeout: &NextTimeout) -> Option<std::time::Duration> {
    timeout.not_zero().map(|d| *d)
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let mut stream = &self.stream.0;
        stream.set_write_timeout(socket_timeout(&timeout.for_write()))?;
        let output = &self.buffers.output()[..amount];
        stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let mut stream = &self.stream.0;
        stream.set_read_timeout(socket_timeout(&timeout.for_read()))?;
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match stream.read(input) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Never reused: a CLI command makes a request or two, and an idle connection cannot be
    /// probed for staleness without reading from it.
    fn is_open(&mut self) -> bool {
        false
    }
}
