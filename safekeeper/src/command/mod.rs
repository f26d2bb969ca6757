//! The command grammar: the text of a simple Query turned into a [`Command`].
//!
//! A small tokenizer (keywords are case-insensitive, as in PostgreSQL's replication
//! grammar; `'…'` and `"…"` quoting; an optional trailing `;`) and one parser per
//! command. Must never: look at timelines or connection state.

use pq_proto::proposer::ProtocolVersion;
use utils::{Lsn, Term};

/// A command a client can send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `START_WAL_PUSH [(proto_version 'N', allow_timeline_creation 'B')]`
    StartWalPush {
        /// Codec of the stream (default v2 when no options are given, as in Neon).
        proto_version: ProtocolVersion,
        /// Whether the greeting may create the timeline.
        allow_timeline_creation: bool,
    },
    /// `START_REPLICATION [SLOT s] [PHYSICAL] X/X [X/X] [TIMELINE n] [(term='N')]` (the
    /// stop LSN is also accepted after `TIMELINE n`)
    StartReplication(StartReplication),
    /// `IDENTIFY_SYSTEM`
    IdentifySystem,
    /// `TIMELINE_STATUS`
    TimelineStatus,
    /// `READER_STATUS`: the positions each reader of the timeline reported.
    ReaderStatus,
    /// `SHOW name`
    Show(String),
    /// `TIMELINE_HISTORY n`
    TimelineHistory(u32),
    /// `READ_REPLICATION_SLOT name`
    ReadReplicationSlot(String),
    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL] [(options)]`
    CreateReplicationSlot {
        /// Slot name.
        name: String,
        /// Whether it would be dropped at disconnect.
        temporary: bool,
    },
    /// `DROP_REPLICATION_SLOT name [WAIT]`
    DropReplicationSlot(String),
    /// `SET datestyle …` (sent by some drivers; answered and ignored).
    SetDatestyle,
    /// An empty query string.
    Empty,
}

/// The arguments of `START_REPLICATION`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartReplication {
    /// `SLOT name`, accepted and ignored (WAL is kept regardless).
    pub slot: Option<String>,
    /// First LSN wanted; `0/0` = from the current end.
    pub start: Lsn,
    /// `TIMELINE n`: the PostgreSQL timeline (only 1 exists here).
    pub timeline: Option<u32>,
    /// A second LSN: end the stream cleanly once it is reached.
    pub stop: Option<Lsn>,
    /// `(term='N')`: stream uncommitted WAL up to flush_lsn while this term holds.
    pub term: Option<Term>,
}

/// Why a query is not a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A command we do not implement (SQL included).
    #[error("unsupported command: {0}")]
    Unsupported(String),
    /// A known command with bad arguments.
    #[error("syntax error in {command}: {detail}")]
    Syntax {
        /// The command.
        command: &'static str,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    LParen,
    RParen,
    Comma,
    Equals,
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | '=' => {
                chars.next();
                out.push(match c {
                    '(' => Token::LParen,
                    ')' => Token::RParen,
                    ',' => Token::Comma,
                    _ => Token::Equals,
                });
            }
            ';' => {
                chars.next();
                if chars.any(|(_, c)| !c.is_whitespace()) {
                    return Err("text after ';'".into());
                }
            }
            '\'' | '"' => {
                chars.next();
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => {
                            // A doubled quote is a literal quote.
                            if chars.peek().map(|&(_, n)| n) == Some(c) {
                                chars.next();
                                v.push(c);
                            } else {
                                break;
                            }
                        }
                        Some((_, ch)) => v.push(ch),
                        None => return Err(format!("unterminated quoted string at {i}")),
                    }
                }
                out.push(if c == '"' {
                    Token::Word(v)
                } else {
                    Token::Quoted(v)
                });
            }
            _ => {
                let mut w = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if ch.is_whitespace() || "(),=;'\"".contains(ch) {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

struct Parser {
    command: &'static str,
    tokens: std::vec::IntoIter<Token>,
    peeked: Option<Token>,
}

impl Parser {
    fn err(&self, detail: impl Into<String>) -> CommandError {
        CommandError::Syntax {
            command: self.command,
            detail: detail.into(),
        }
    }

    fn peek(&mut self) -> Option<&Token> {
        if self.peeked.is_none() {
            self.peeked = self.tokens.next();
        }
        self.peeked.as_ref()
    }

    fn next(&mut self) -> Option<Token> {
        self.peeked.take().or_else(|| self.tokens.next())
    }

    fn peek_keyword(&mut self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let yes = self.peek_keyword(kw);
        if yes {
            self.next();
        }
        yes
    }

    /// A name: a bare word or a double-quoted identifier.
    fn name(&mut self, what: &str) -> Result<String, CommandError> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            other => Err(self.err(format!("expected {what}, got {}", describe(&other)))),
        }
    }

    fn lsn(&mut self) -> Result<Lsn, CommandError> {
        let w = self.name("an LSN like 0/16B3748")?;
        w.parse()
            .map_err(|e: utils::LsnParseError| self.err(e.to_string()))
    }

    fn peek_lsn(&mut self) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.contains('/'))
    }

    /// `( key ['='] 'value' [, …] )`, if present.
    fn options(&mut self) -> Result<Vec<(String, String)>, CommandError> {
        let mut out = Vec::new();
        if self.peek() != Some(&Token::LParen) {
            return Ok(out);
        }
        self.next();
        loop {
            let key = self.name("an option name")?.to_ascii_lowercase();
            if self.peek() == Some(&Token::Equals) {
                self.next();
            }
            let value = match self.peek() {
                Some(Token::Quoted(_)) | Some(Token::Word(_)) => match self.next() {
                    Some(Token::Quoted(v)) | Some(Token::Word(v)) => v,
                    _ => unreachable!("peeked a value"),
                },
                // A bare option (e.g. RESERVE_WAL) has no value.
                _ => String::new(),
            };
            out.push((key, value));
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RParen) => break,
                other => {
                    return Err(self.err(format!("expected ',' or ')', got {}", describe(&other))));
                }
            }
        }
        Ok(out)
    }

    fn end(&mut self) -> Result<(), CommandError> {
        match self.next() {
            None => Ok(()),
            other => Err(self.err(format!("unexpected {}", describe(&other)))),
        }
    }
}

fn describe(t: &Option<Token>) -> String {
    match t {
        None => "end of command".into(),
        Some(Token::Word(w)) => format!("\"{w}\""),
        Some(Token::Quoted(q)) => format!("'{q}'"),
        Some(Token::LParen) => "'('".into(),
        Some(Token::RParen) => "')'".into(),
        Some(Token::Comma) => "','".into(),
        Some(Token::Equals) => "'='".into(),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "t" => Some(true),
        "false" | "off" | "no" | "0" | "f" => Some(false),
        _ => None,
    }
}

/// Parses the text of a simple Query.
pub fn parse(query: &str) -> Result<Command, CommandError> {
    let unsupported = || CommandError::Unsupported(query.trim().chars().take(200).collect());
    let tokens = tokenize(query).map_err(|detail| CommandError::Syntax {
        command: "query",
        detail,
    })?;
    let Some(Token::Word(first)) = tokens.first().cloned() else {
        return if tokens.is_empty() {
            Ok(Command::Empty)
        } else {
            Err(unsupported())
        };
    };
    let keyword = first.to_ascii_uppercase();
    let command: &'static str = match keyword.as_str() {
        "START_WAL_PUSH" => "START_WAL_PUSH",
        "START_REPLICATION" => "START_REPLICATION",
        "IDENTIFY_SYSTEM" => "IDENTIFY_SYSTEM",
        "TIMELINE_STATUS" => "TIMELINE_STATUS",
        "READER_STATUS" => "READER_STATUS",
        "SHOW" => "SHOW",
        "TIMELINE_HISTORY" => "TIMELINE_HISTORY",
        "READ_REPLICATION_SLOT" => "READ_REPLICATION_SLOT",
        "CREATE_REPLICATION_SLOT" => "CREATE_REPLICATION_SLOT",
        "DROP_REPLICATION_SLOT" => "DROP_REPLICATION_SLOT",
        "SET" => "SET",
        _ => return Err(unsupported()),
    };
    let mut p = Parser {
        command,
        tokens: tokens.into_iter(),
        peeked: None,
    };
    p.next();
    let cmd = match command {
        "START_WAL_PUSH" => {
            let opts = p.options()?;
            let mut proto_version = ProtocolVersion::V2;
            let mut allow_timeline_creation = true;
            for (k, v) in opts {
                match k.as_str() {
                    "proto_version" => {
                        proto_version = match v.as_str() {
                            "2" => ProtocolVersion::V2,
                            "3" => ProtocolVersion::V3,
                            _ => {
                                return Err(p.err(format!(
                                    "unsupported proto_version '{v}': supported are '2' and '3'"
                                )));
                            }
                        }
                    }
                    "allow_timeline_creation" => {
                        allow_timeline_creation = parse_bool(&v).ok_or_else(|| {
                            p.err(format!(
                                "allow_timeline_creation must be true or false, got '{v}'"
                            ))
                        })?;
                    }
                    other => tracing::warn!("START_WAL_PUSH: ignoring unknown option {other}"),
                }
            }
            Command::StartWalPush {
                proto_version,
                allow_timeline_creation,
            }
        }
        "START_REPLICATION" => {
            let mut sr = StartReplication::default();
            if p.eat_keyword("SLOT") {
                sr.slot = Some(p.name("a slot name")?);
            }
            if p.eat_keyword("LOGICAL") {
                return Err(p.err("logical replication is not supported"));
            }
            p.eat_keyword("PHYSICAL");
            sr.start = p.lsn()?;
            // The stop LSN may follow the start directly (`X/X X/X TIMELINE n`, as the
            // issue's grammar has it) or come after the timeline (`X/X TIMELINE n X/X`).
            if p.peek_lsn() {
                sr.stop = Some(p.lsn()?);
            }
            if p.eat_keyword("TIMELINE") {
                let n = p.name("a timeline number")?;
                sr.timeline = Some(
                    n.parse()
                        .map_err(|_| p.err(format!("invalid timeline number \"{n}\"")))?,
                );
            }
            if sr.stop.is_none() && p.peek_lsn() {
                sr.stop = Some(p.lsn()?);
            }
            for (k, v) in p.options()? {
                match k.as_str() {
                    "term" => {
                        sr.term = Some(Term(
                            v.parse()
                                .map_err(|_| p.err(format!("invalid term '{v}'")))?,
                        ))
                    }
                    other => return Err(p.err(format!("unknown option \"{other}\""))),
                }
            }
            Command::StartReplication(sr)
        }
        "IDENTIFY_SYSTEM" => Command::IdentifySystem,
        "TIMELINE_STATUS" => Command::TimelineStatus,
        "READER_STATUS" => Command::ReaderStatus,
        "SHOW" => Command::Show(p.name("a setting name")?.to_ascii_lowercase()),
        "TIMELINE_HISTORY" => {
            let n = p.name("a timeline number")?;
            Command::TimelineHistory(
                n.parse()
                    .map_err(|_| p.err(format!("invalid timeline number \"{n}\"")))?,
            )
        }
        "READ_REPLICATION_SLOT" => Command::ReadReplicationSlot(p.name("a slot name")?),
        "CREATE_REPLICATION_SLOT" => {
            let name = p.name("a slot name")?;
            let temporary = p.eat_keyword("TEMPORARY");
            if p.eat_keyword("LOGICAL") {
                return Err(p.err("logical replication slots are not supported"));
            }
            if !p.eat_keyword("PHYSICAL") {
                return Err(p.err("expected PHYSICAL"));
            }
            p.eat_keyword("RESERVE_WAL");
            p.options()?;
            Command::CreateReplicationSlot { name, temporary }
        }
        "DROP_REPLICATION_SLOT" => {
            let name = p.name("a slot name")?;
            p.eat_keyword("WAIT");
            Command::DropReplicationSlot(name)
        }
        "SET" => {
            if !p.eat_keyword("datestyle") {
                return Err(unsupported());
            }
            // Whatever follows is accepted and ignored.
            while p.next().is_some() {}
            Command::SetDatestyle
        }
        _ => unreachable!("every keyword above is handled"),
    };
    p.end()?;
    Ok(cmd)
}

#[cfg(test)]
mod tests;
