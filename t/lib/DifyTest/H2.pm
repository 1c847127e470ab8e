package DifyTest::H2;

=pod

=head1 NAME

DifyTest::H2 - a minimal HTTP/2 client (cleartext, prior knowledge) in
core Perl, for the integration tests

curl 7.88 (bookworm) discards a response when the server resets the stream
with NO_ERROR before the request body was sent (RFC 9113 8.1 allows the
server to answer early and do that; nginx does it for every early
rejection), so the tests speak HTTP/2 themselves.

    my $h = DifyTest::H2->new(port => $port, timeout => 30);
    my $r = $h->request('PATCH', '/v1/...',
        headers => [ 'content-type' => 'application/json' ],
        body    => $bytes,          # undef: no body (END_STREAM on HEADERS)
        no_length => 1,             # do not add content-length
        frame => 100,               # at most 100 bytes per DATA frame
        pause => 0.05,              # seconds before each DATA frame
        abort_after => 500);        # close the connection after 500 bytes
                                    # of the body (returns undef)
    # $r: { version => '2', status, reason => '', headers => { lc => v },
    #       header_list, body, json, interim => [...], stream,
    #       rst => RST_STREAM error code or undef, goaway => code or undef,
    #       body_sent => bytes of the body sent before the stream ended }
    $h->request(...);               # more streams on the same connection
    $h->close;

Flow control and SETTINGS are honoured (the body is sent in DATA frames
within the peer's windows); PING is answered; HPACK is decoded fully
(static and dynamic tables, Huffman).  Requests are encoded as literals
without indexing.

=cut

use strict;
use warnings;

use IO::Socket::INET;
use Time::HiRes qw(time);

my @STATIC = (
    undef,
    [':authority', ''], [':method', 'GET'], [':method', 'POST'],
    [':path', '/'], [':path', '/index.html'], [':scheme', 'http'],
    [':scheme', 'https'], [':status', '200'], [':status', '204'],
    [':status', '206'], [':status', '304'], [':status', '400'],
    [':status', '404'], [':status', '500'], ['accept-charset', ''],
    ['accept-encoding', 'gzip, deflate'], ['accept-language', ''],
    ['accept-ranges', ''], ['accept', ''],
    ['access-control-allow-origin', ''], ['age', ''], ['allow', ''],
    ['authorization', ''], ['cache-control', ''],
    ['content-disposition', ''], ['content-encoding', ''],
    ['content-language', ''], ['content-length', ''],
    ['content-location', ''], ['content-range', ''], ['content-type', ''],
    ['cookie', ''], ['date', ''], ['etag', ''], ['expect', ''],
    ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''],
    ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''],
    ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''],
    ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''],
    ['proxy-authorization', ''], ['range', ''], ['referer', ''],
    ['refresh', ''], ['retry-after', ''], ['server', ''],
    ['set-cookie', ''], ['strict-transport-security', ''],
    ['transfer-encoding', ''], ['user-agent', ''], ['vary', ''],
    ['via', ''], ['www-authenticate', ''],
);

# RFC 7541 Appendix B: code:length for symbols 0..256 (256 is EOS)
my $HUFFMAN = <<'END';
    1ff8:13 7fffd8:23 fffffe2:28 fffffe3:28 fffffe4:28 fffffe5:28 fffffe6:28 fffffe7:28
    fffffe8:28 ffffea:24 3ffffffc:30 fffffe9:28 fffffea:28 3ffffffd:30 fffffeb:28 fffffec:28
    fffffed:28 fffffee:28 fffffef:28 ffffff0:28 ffffff1:28 ffffff2:28 3ffffffe:30 ffffff3:28
    ffffff4:28 ffffff5:28 ffffff6:28 ffffff7:28 ffffff8:28 ffffff9:28 ffffffa:28 ffffffb:28
    14:6 3f8:10 3f9:10 ffa:12 1ff9:13 15:6 f8:8 7fa:11
    3fa:10 3fb:10 f9:8 7fb:11 fa:8 16:6 17:6 18:6
    0:5 1:5 2:5 19:6 1a:6 1b:6 1c:6 1d:6
    1e:6 1f:6 5c:7 fb:8 7ffc:15 20:6 ffb:12 3fc:10
    1ffa:13 21:6 5d:7 5e:7 5f:7 60:7 61:7 62:7
    63:7 64:7 65:7 66:7 67:7 68:7 69:7 6a:7
    6b:7 6c:7 6d:7 6e:7 6f:7 70:7 71:7 72:7
    fc:8 73:7 fd:8 1ffb:13 7fff0:19 1ffc:13 3ffc:14 22:6
    7ffd:15 3:5 23:6 4:5 24:6 5:5 25:6 26:6
    27:6 6:5 74:7 75:7 28:6 29:6 2a:6 7:5
    2b:6 76:7 2c:6 8:5 9:5 2d:6 77:7 78:7
    79:7 7a:7 7b:7 7ffe:15 7fc:11 3ffd:14 1ffd:13 ffffffc:28
    fffe6:20 3fffd2:22 fffe7:20 fffe8:20 3fffd3:22 3fffd4:22 3fffd5:22 7fffd9:23
    3fffd6:22 7fffda:23 7fffdb:23 7fffdc:23 7fffdd:23 7fffde:23 ffffeb:24 7fffdf:23
    ffffec:24 ffffed:24 3fffd7:22 7fffe0:23 ffffee:24 7fffe1:23 7fffe2:23 7fffe3:23
    7fffe4:23 1fffdc:21 3fffd8:22 7fffe5:23 3fffd9:22 7fffe6:23 7fffe7:23 ffffef:24
    3fffda:22 1fffdd:21 fffe9:20 3fffdb:22 3fffdc:22 7fffe8:23 7fffe9:23 1fffde:21
    7fffea:23 3fffdd:22 3fffde:22 fffff0:24 1fffdf:21 3fffdf:22 7fffeb:23 7fffec:23
    1fffe0:21 1fffe1:21 3fffe0:22 1fffe2:21 7fffed:23 3fffe1:22 7fffee:23 7fffef:23
    fffea:20 3fffe2:22 3fffe3:22 3fffe4:22 7ffff0:23 3fffe5:22 3fffe6:22 7ffff1:23
    3ffffe0:26 3ffffe1:26 fffeb:20 7fff1:19 3fffe7:22 7ffff2:23 3fffe8:22 1ffffec:25
    3ffffe2:26 3ffffe3:26 3ffffe4:26 7ffffde:27 7ffffdf:27 3ffffe5:26 fffff1:24 1ffffed:25
    7fff2:19 1fffe3:21 3ffffe6:26 7ffffe0:27 7ffffe1:27 3ffffe7:26 7ffffe2:27 fffff2:24
    1fffe4:21 1fffe5:21 3ffffe8:26 3ffffe9:26 ffffffd:28 7ffffe3:27 7ffffe4:27 7ffffe5:27
    fffec:20 fffff3:24 fffed:20 1fffe6:21 3fffe9:22 1fffe7:21 1fffe8:21 7ffff3:23
    3fffea:22 3fffeb:22 1ffffee:25 1ffffef:25 fffff4:24 fffff5:24 3ffffea:26 7ffff4:23
    3ffffeb:26 7ffffe6:27 3ffffec:26 3ffffed:26 7ffffe7:27 7ffffe8:27 7ffffe9:27 7ffffea:27
    7ffffeb:27 ffffffe:28 7ffffec:27 7ffffed:27 7ffffee:27 7ffffef:27 7fffff0:27 3ffffee:26
    3fffffff:30
END

my %HUFF;
{
    my $sym = 0;
    for my $pair (split ' ', $HUFFMAN) {
        my ($code, $len) = split /:/, $pair;
        $HUFF{"$len:" . hex $code} = $sym++;
    }
    die "DifyTest::H2: bad Huffman table ($sym)\n" unless $sym == 257;
}

use constant {
    DATA => 0, HEADERS => 1, PRIORITY => 2, RST_STREAM => 3, SETTINGS => 4,
    PUSH_PROMISE => 5, PING => 6, GOAWAY => 7, WINDOW_UPDATE => 8,
    CONTINUATION => 9,
    END_STREAM => 0x1, ACK => 0x1, END_HEADERS => 0x4, PADDED => 0x8,
    PRIORITY_FLAG => 0x20,
};

my $MY_WINDOW = 1 << 30;

sub new {
    my ($class, %o) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $o{port}, Proto => 'tcp',
        Timeout => $o{timeout} // 30,
    ) or die "DifyTest::H2: connect to 127.0.0.1:$o{port}: $!\n";
    binmode $s;
    my $self = bless {
        sock         => $s,
        buf          => '',
        timeout      => $o{timeout} // 30,
        next_stream  => 1,
        peer_window  => 65535,       # SETTINGS_INITIAL_WINDOW_SIZE
        peer_frame   => 16384,       # SETTINGS_MAX_FRAME_SIZE
        conn_window  => 65535,       # what we may send on the connection
        table        => [],          # HPACK dynamic table, newest first
        table_size   => 0,
        table_max    => 4096,
        streams      => {},
    }, $class;

    $self->_send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        . _frame(SETTINGS, 0, 0,
                 pack('nN', 2, 0) . pack('nN', 4, $MY_WINDOW))
        . _frame(WINDOW_UPDATE, 0, 0, pack('N', $MY_WINDOW - 65535)));
    return $self;
}

sub _frame {
    my ($type, $flags, $stream, $payload) = @_;
    my $len = length $payload;
    return pack('CnCCN', $len >> 16, $len & 0xffff, $type, $flags,
                $stream & 0x7fffffff) . $payload;
}

sub _send {
    my ($self, $bytes) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite $self->{sock}, $bytes, length($bytes) - $off, $off;
        if (!defined $n) {
            $self->{broken} = "write: $!";
            return 0;
        }
        $off += $n;
    }
    return 1;
}

sub _int {
    my ($n, $prefix, $first) = @_;
    my $max = (1 << $prefix) - 1;
    return chr($first | $n) if $n < $max;
    my $out = chr($first | $max);
    $n -= $max;
    while ($n >= 128) {
        $out .= chr(($n & 0x7f) | 0x80);
        $n >>= 7;
    }
    return $out . chr($n);
}

sub _literal {
    my ($name, $value) = @_;
    return "\x00" . _int(length $name, 7, 0) . $name
        . _int(length $value, 7, 0) . $value;
}

sub request {
    my ($self, $method, $path, %o) = @_;
    my $id = $self->{next_stream};
    $self->{next_stream} += 2;

    my @h = @{ $o{headers} // [] };
    my @pairs;
    for (my $i = 0; $i + 1 < @h; $i += 2) {
        push @pairs, [ lc $h[$i], $h[ $i + 1 ] ];
    }
    my %has = map { $_->[0] => 1 } @pairs;
    my $body = $o{body};
    push @pairs, [ 'content-length', length $body ]
        if defined $body && !$o{no_length} && !$has{'content-length'};

    my $block = _literal(':method', $method) . _literal(':scheme', 'http')
        . _literal(':path', $path)
        . _literal(':authority', $o{authority} // 'localhost')
        . join('', map { _literal(@$_) } @pairs);

    my $st = $self->{streams}{$id} = {
        id => $id, window => $self->{peer_window}, interim => [],
        headers => undef, body => '', done => 0, block => '',
    };

    my $flags = END_HEADERS | (defined $body ? 0 : END_STREAM);
    $self->_send(_frame(HEADERS, $flags, $id, $block)) or return undef;

    my $deadline = time + ($o{timeout} // $self->{timeout});
    my $sent = 0;
    if (defined $body) {
        while (!$st->{done} && !$self->{goaway} && !$self->{broken}) {
            my $left = length($body) - $sent;
            my $n = $left;
            $n = $self->{peer_frame} if $n > $self->{peer_frame};
            $n = $o{frame} if $o{frame} && $n > $o{frame};
            $n = $st->{window} if $n > $st->{window};
            $n = $self->{conn_window} if $n > $self->{conn_window};
            if ($n > 0 || $left == 0) {
                my $last = $n == $left;
                if ($o{abort_after} && $sent + $n >= $o{abort_after}) {
                    # the client goes away in the middle of the body
                    $self->_send(_frame(DATA, 0, $id,
                                 substr($body, $sent, $o{abort_after} - $sent)));
                    close $self->{sock};
                    $self->{sock} = undef;
                    return undef;
                }
                select(undef, undef, undef, $o{pause})
                    if $o{pause} && $sent;
                $self->_send(_frame(DATA, $last ? END_STREAM : 0, $id,
                                    substr($body, $sent, $n))) or last;
                $sent += $n;
                $st->{window} -= $n;
                $self->{conn_window} -= $n;
                last if $last;
                # take in what the server has said so far, without waiting
                $self->_read_frames($deadline, 0);
                next;
            }
            # blocked by flow control: wait for a WINDOW_UPDATE (or an
            # early answer)
            last unless $self->_read_frames($deadline, 1);
        }
    }

    while (!$st->{done} && !$self->{goaway} && !$self->{broken}) {
        last unless $self->_read_frames($deadline, 1);
    }

    my $res = $self->_response($st);
    $res->{body_sent} = $sent;
    delete $self->{streams}{$id};
    return $res;
}

sub _response {
    my ($self, $st) = @_;
    my @pairs = grep { $_->[0] !~ /^:/ } @{ $st->{headers} // [] };
    my ($status) = map { $_->[1] } grep { $_->[0] eq ':status' }
        @{ $st->{headers} // [] };
    my %h;
    for (@pairs) {
        $h{ $_->[0] } = exists $h{ $_->[0] } ? "$h{$_->[0]}, $_->[1]"
                                             : $_->[1];
    }
    my $json = eval { JSON::PP->new->decode($st->{body}) };
    return {
        version     => '2',
        status      => $status,
        reason      => '',
        headers     => \%h,
        header_list => \@pairs,
        body        => $st->{body},
        json        => $json,
        interim     => $st->{interim},
        stream      => $st->{id},
        rst         => $st->{rst},
        goaway      => $self->{goaway},
        incomplete  => $st->{done} ? 0 : 1,
    };
}

# reads and handles frames; with $wait, blocks (until $deadline) for at
# least one.  Returns 0 on EOF, timeout or error.
sub _read_frames {
    my ($self, $deadline, $wait) = @_;
    my $got = 0;
    while (1) {
        while (length($self->{buf}) >= 9) {
            my ($l1, $l2, $type, $flags, $sid) =
                unpack 'CnCCN', substr($self->{buf}, 0, 9);
            my $len = ($l1 << 16) | $l2;
            last if length($self->{buf}) < 9 + $len;
            my $payload = substr $self->{buf}, 9, $len;
            substr($self->{buf}, 0, 9 + $len) = '';
            $self->_frame_in($type, $flags, $sid & 0x7fffffff, $payload);
            $got++;
        }
        return 1 if $got;
        my $left = $wait ? $deadline - time : 0;
        return 0 if $wait && $left <= 0;
        my $rin = '';
        vec($rin, fileno $self->{sock}, 1) = 1;
        my $n = select(my $rout = $rin, undef, undef, $left);
        return $wait ? 0 : 1 unless $n && $n > 0;
        $n = sysread $self->{sock}, $self->{buf}, 65536, length $self->{buf};
        if (!$n) {
            $self->{eof} = 1;       # streams not done are incomplete
            return 0;
        }
    }
}

sub _frame_in {
    my ($self, $type, $flags, $sid, $p) = @_;
    my $st = $self->{streams}{$sid};

    if ($type == SETTINGS) {
        return if $flags & ACK;
        while (length $p >= 6) {
            my ($k, $v) = unpack 'nN', substr($p, 0, 6, '');
            if ($k == 4) {
                my $delta = $v - $self->{peer_window};
                $self->{peer_window} = $v;
                $_->{window} += $delta for values %{ $self->{streams} };
            } elsif ($k == 5) {
                $self->{peer_frame} = $v;
            }
        }
        $self->_send(_frame(SETTINGS, ACK, 0, ''));
    } elsif ($type == PING) {
        $self->_send(_frame(PING, ACK, 0, $p)) unless $flags & ACK;
    } elsif ($type == WINDOW_UPDATE) {
        my $inc = unpack('N', $p) & 0x7fffffff;
        if ($sid == 0) {
            $self->{conn_window} += $inc;
        } elsif ($st) {
            $st->{window} += $inc;
        }
    } elsif ($type == GOAWAY) {
        my (undef, $code) = unpack 'NN', $p;
        $self->{goaway} = $code;
    } elsif ($type == RST_STREAM) {
        return unless $st;
        $st->{rst} = unpack 'N', $p;
        $st->{done} = 1;
    } elsif ($type == HEADERS || $type == CONTINUATION) {
        return unless $st;
        if ($type == HEADERS) {
            my $pad = 0;
            if ($flags & PADDED) {
                $pad = ord substr($p, 0, 1, '');
            }
            substr($p, 0, 5, '') if $flags & PRIORITY_FLAG;
            substr($p, -$pad) = '' if $pad;
            $st->{end_stream_pending} = $flags & END_STREAM;
        }
        $st->{block} .= $p;
        return unless $flags & END_HEADERS;
        my @h = $self->_hpack_decode($st->{block});
        $st->{block} = '';
        my ($status) = map { $_->[1] } grep { $_->[0] eq ':status' } @h;
        if (defined $status && $status =~ /^1/) {
            push @{ $st->{interim} }, { version => '2', status => $status,
                headers => { map { @$_ } grep { $_->[0] !~ /^:/ } @h },
                body => '', interim => [] };
        } elsif (!$st->{headers}) {
            $st->{headers} = \@h;
        } else {
            push @{ $st->{trailers} }, @h;
        }
        $st->{done} = 1 if $st->{end_stream_pending};
    } elsif ($type == DATA) {
        my $len = length $p;
        if ($flags & PADDED) {
            my $pad = ord substr($p, 0, 1, '');
            substr($p, -$pad) = '' if $pad;
        }
        if ($len) {
            $self->_send(_frame(WINDOW_UPDATE, 0, 0, pack('N', $len))
                . ($st && !($flags & END_STREAM)
                   ? _frame(WINDOW_UPDATE, 0, $sid, pack('N', $len)) : ''));
        }
        return unless $st;
        $st->{body} .= $p;
        $st->{done} = 1 if $flags & END_STREAM;
    }
}

# --- HPACK ----------------------------------------------------------------

sub _hpack_int {
    my ($dref, $prefix) = @_;
    my $max = (1 << $prefix) - 1;
    my $n = ord(substr($$dref, 0, 1, '')) & $max;
    return $n if $n < $max;
    my $shift = 0;
    while (1) {
        my $b = ord substr($$dref, 0, 1, '');
        $n += ($b & 0x7f) << $shift;
        $shift += 7;
        last unless $b & 0x80;
    }
    return $n;
}

sub _hpack_string {
    my ($dref) = @_;
    my $huff = ord(substr($$dref, 0, 1)) & 0x80;
    my $len = _hpack_int($dref, 7);
    my $s = substr $$dref, 0, $len, '';
    return $huff ? _huffman_decode($s) : $s;
}

sub _huffman_decode {
    my ($s) = @_;
    my $out = '';
    my ($code, $len) = (0, 0);
    for my $bit (split //, unpack 'B*', $s) {
        $code = ($code << 1) | $bit;
        $len++;
        my $sym = $HUFF{"$len:$code"};
        if (defined $sym) {
            die "DifyTest::H2: EOS in a Huffman string\n" if $sym == 256;
            $out .= chr $sym;
            ($code, $len) = (0, 0);
        }
        die "DifyTest::H2: bad Huffman code\n" if $len > 30;
    }
    die "DifyTest::H2: bad Huffman padding\n"
        if $len > 7 || $code != (1 << $len) - 1;
    return $out;
}

sub _entry {
    my ($self, $i) = @_;
    return @{ $STATIC[$i] } if $i >= 1 && $i < @STATIC;
    my $e = $self->{table}[ $i - @STATIC ]
        or die "DifyTest::H2: bad HPACK index $i\n";
    return @$e;
}

sub _table_add {
    my ($self, $n, $v) = @_;
    unshift @{ $self->{table} }, [ $n, $v ];
    $self->{table_size} += 32 + length($n) + length($v);
    $self->_table_evict;
}

sub _table_evict {
    my ($self) = @_;
    while ($self->{table_size} > $self->{table_max} && @{ $self->{table} }) {
        my $e = pop @{ $self->{table} };
        $self->{table_size} -= 32 + length($e->[0]) + length($e->[1]);
    }
}

sub _hpack_decode {
    my ($self, $d) = @_;
    my @h;
    while (length $d) {
        my $b = ord substr($d, 0, 1);
        if ($b & 0x80) {
            push @h, [ $self->_entry(_hpack_int(\$d, 7)) ];
        } elsif ($b & 0x40) {
            my $i = _hpack_int(\$d, 6);
            my $n = $i ? ($self->_entry($i))[0] : _hpack_string(\$d);
            my $v = _hpack_string(\$d);
            $self->_table_add($n, $v);
            push @h, [ $n, $v ];
        } elsif ($b & 0x20) {
            $self->{table_max} = _hpack_int(\$d, 5);
            $self->_table_evict;
        } else {
            my $i = _hpack_int(\$d, 4);
            my $n = $i ? ($self->_entry($i))[0] : _hpack_string(\$d);
            push @h, [ $n, _hpack_string(\$d) ];
        }
    }
    return @h;
}

sub close {
    my ($self) = @_;
    if ($self->{sock}) {
        $self->_send(_frame(GOAWAY, 0, 0, pack('NN', 0, 0)));
        close $self->{sock};
    }
    $self->{sock} = undef;
}

1;
