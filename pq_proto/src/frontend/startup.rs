//! The untagged packets a client sends before the session starts: SSLRequest,
//! GSSENCRequest, CancelRequest and the StartupMessage.
//!
//! Owns: their parse and write. Must never: accept a packet longer than
//! [`MAX_STARTUP_PACKET_LEN`] (checked from the length word alone), or a protocol major
//! version other than 3; choosing how to answer is the server's business.

use bytes::{BufMut, BytesMut};

use crate::codec::{Reader, checked_len, put_cstr, write_len_prefixed};
use crate::{MAX_STARTUP_PACKET_LEN, ProtocolError};

/// Startup code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80877103;
/// Startup code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
/// Startup code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Startup code of a protocol 3.0 StartupMessage.
pub const PROTOCOL_V3_CODE: u32 = 3 << 16;

/// Length word plus startup code.
const HEADER_LEN: usize = 8;

/// A packet of the startup phase (these carry no tag byte: length, then a 32-bit code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeStartupPacket {
    /// Asks for TLS; answered with one byte, `S` or `N`.
    SslRequest,
    /// Asks for GSSAPI encryption; answered with one byte, `G` or `N`.
    GssEncRequest,
    /// Asks to cancel the query running in another session.
    CancelRequest {
        /// The target session's process id (from its BackendKeyData).
        process_id: i32,
        /// The target session's secret key.
        secret_key: i32,
    },
    /// Opens a session.
    Startup {
        /// Protocol major version (always 3: others are refused by the parser).
        major: u16,
        /// Protocol minor version.
        minor: u16,
        /// The parameters (`user`, `database`, `options`, `application_name`, ...), in the
        /// order sent.
        params: Vec<(String, String)>,
    },
}

impl FeStartupPacket {
    /// Parses one packet from the front of `buf`: `Ok(None)` (nothing consumed) until it is
    /// complete, then exactly the packet is consumed. The length and the code are checked
    /// as soon as they arrive.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        const MSG: &str = "startup packet";
        let Some(len) = checked_len(buf, 0, HEADER_LEN, MAX_STARTUP_PACKET_LEN + 4, MSG)? else {
            return Ok(None);
        };
        let Some(code) = buf.get(4..HEADER_LEN) else {
            return Ok(None);
        };
        let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
        let (major, minor) = ((code >> 16) as u16, code as u16);
        let message = match code {
            SSL_REQUEST_CODE => "SSLRequest",
            GSSENC_REQUEST_CODE => "GSSENCRequest",
            CANCEL_REQUEST_CODE => "CancelRequest",
            _ if major == 3 => "StartupMessage",
            _ => return Err(ProtocolError::UnsupportedProtocolVersion { major, minor }),
        };
        if buf.len() < len {
            return Ok(None);
        }
        let mut packet = buf.split_to(len).freeze();
        let mut r = Reader::new(packet.split_off(HEADER_LEN), message);
        let packet = match code {
            SSL_REQUEST_CODE => FeStartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => FeStartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => FeStartupPacket::CancelRequest {
                process_id: r.i32("process id")?,
                secret_key: r.i32("secret key")?,
            },
            _ => FeStartupPacket::Startup {
                major,
                minor,
                params: parse_params(&mut r)?,
            },
        };
        r.finish()?;
        Ok(Some(packet))
    }

    /// Appends the packet to `buf`.
    pub fn write(&self, buf: &mut BytesMut) {
        write_len_prefixed(buf, |buf| match self {
            FeStartupPacket::SslRequest => buf.put_u32(SSL_REQUEST_CODE),
            FeStartupPacket::GssEncRequest => buf.put_u32(GSSENC_REQUEST_CODE),
            FeStartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => {
                buf.put_u32(CANCEL_REQUEST_CODE);
                buf.put_i32(*process_id);
                buf.put_i32(*secret_key);
            }
            FeStartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                buf.put_u16(*major);
                buf.put_u16(*minor);
                for (name, value) in params {
                    put_cstr(buf, name.as_bytes());
                    put_cstr(buf, value.as_bytes());
                }
                buf.put_u8(0);
            }
        });
    }

    /// The value of startup parameter `name` (the first one, if repeated); `None` for the
    /// other packets.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            FeStartupPacket::Startup { params, .. } => params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Name/value cstring pairs, ended by an empty name.
fn parse_params(r: &mut Reader) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        if r.remaining() == 0 {
            return Err(ProtocolError::Truncated {
                message: r.message(),
                field: "parameter list terminator",
            });
        }
        let name = r.cstring("parameter name")?;
        if name.is_empty() {
            return Ok(params);
        }
        let value = r.cstring("parameter value")?;
        params.push((name, value));
    }
}
