#!/usr/bin/perl
#
# A recording HTTP/1.1 upstream for the integration tests (core Perl only).
#
#   upstream.pl --port-file FILE --log FILE [--conn-log FILE] [--port N]
#
# Listens on 127.0.0.1 (port N, or a free one; the port is written to
# --port-file once listening), forks a child per connection, and serves
# keep-alive HTTP/1.x with Content-Length or chunked request bodies.
#
# Every complete request is appended to --log as one JSON line, BEFORE the
# response is sent:
#
#   {"method":..., "uri":..., "version":"HTTP/1.0",
#    "headers":[[name, value], ...],      (in the order received)
#    "body_b64":..., "body_length":N,     (de-chunked, exact bytes)
#    "chunked":0|1, "head_b64":...,       (the raw request head)
#    "conn":"PID.N", "seq":N, "time":T}
#
# Every accepted connection appends one line to --conn-log.
#
# Answers 200 with Content-Type: application/json and {"result": "success"}
# (the documented 200 body).  A request header X-Test-Upstream-Status: NNN
# makes it answer NNN with the same body instead.

use strict;
use warnings;

use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_REUSEADDR);
use Fcntl qw(:flock O_WRONLY O_APPEND O_CREAT);
use MIME::Base64 qw(encode_base64);
use JSON::PP;
use Time::HiRes qw(time);
use POSIX ();

my %opt = (port => 0);
while (@ARGV) {
    my $k = shift @ARGV;
    $k =~ s/^--//;
    $opt{$k} = shift @ARGV;
}
die "usage: $0 --port-file FILE --log FILE [--conn-log FILE]\n"
    unless $opt{'port-file'} && $opt{log};

my $IDLE_TIMEOUT = 120;     # seconds a kept-alive connection may idle
my $BODY = '{"result": "success"}';
my $json = JSON::PP->new->ascii->canonical;

my $srv = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1',
    LocalPort => $opt{port},
    Proto     => 'tcp',
    Listen    => 128,
    ReuseAddr => 1,
) or die "upstream.pl: listen: $!\n";

{
    my $tmp = "$opt{'port-file'}.tmp";
    open my $fh, '>', $tmp or die "upstream.pl: $tmp: $!\n";
    print $fh $srv->sockport, "\n";
    close $fh;
    rename $tmp, $opt{'port-file'} or die "upstream.pl: rename: $!\n";
}

$SIG{CHLD} = 'IGNORE';          # children are reaped automatically
$SIG{PIPE} = 'IGNORE';
$SIG{TERM} = sub { POSIX::_exit(0) };

my $nconn = 0;

while (1) {
    my $c = $srv->accept;
    if (!$c) {
        next if $!{EINTR};
        die "upstream.pl: accept: $!\n";
    }
    $nconn++;
    append_line($opt{'conn-log'}, sprintf("%.6f %d\n", time, $nconn))
        if $opt{'conn-log'};

    my $pid = fork;
    if (!defined $pid) {
        warn "upstream.pl: fork: $!\n";
        close $c;
        next;
    }
    if ($pid == 0) {
        close $srv;
        $SIG{TERM} = 'DEFAULT';
        serve($c, "$$.$nconn");
        POSIX::_exit(0);
    }
    close $c;
}


sub append_line {
    my ($file, $line) = @_;
    sysopen my $fh, $file, O_WRONLY | O_APPEND | O_CREAT
        or die "upstream.pl: $file: $!\n";
    flock $fh, LOCK_EX;
    my $off = 0;
    while ($off < length $line) {
        my $n = syswrite $fh, $line, length($line) - $off, $off;
        die "upstream.pl: write $file: $!\n" unless defined $n;
        $off += $n;
    }
    flock $fh, LOCK_UN;
    close $fh;
}


# reads more bytes into $$buf; returns 0 on EOF/timeout/error
sub fill {
    my ($c, $buf) = @_;
    my $rin = '';
    vec($rin, fileno($c), 1) = 1;
    my $n = select(my $rout = $rin, undef, undef, $IDLE_TIMEOUT);
    return 0 if !$n || $n < 0;
    $n = sysread $c, $$buf, 65536, length $$buf;
    return $n ? 1 : 0;
}


sub serve {
    my ($c, $conn) = @_;
    my $buf = '';
    my $seq = 0;

    binmode $c;

    while (1) {
        # the request head
        my $end;
        while (1) {
            if ($buf =~ /\r?\n\r?\n/) {
                $end = $+[0];
                last;
            }
            return unless fill($c, \$buf);
        }
        my $head = substr $buf, 0, $end, '';
        my @lines = split /\r?\n/, $head;
        my $reqline = shift @lines;
        my ($method, $uri, $version) = split / /, $reqline, 3;
        $version //= 'HTTP/0.9';
        my @headers;
        for my $l (@lines) {
            next if $l eq '';
            if ($l =~ /^[ \t]/ && @headers) {       # obsolete folding
                $headers[-1][1] .= ' ' . ($l =~ s/^\s+//r);
                next;
            }
            my ($n, $v) = $l =~ /^([^:]*):[ \t]*(.*?)[ \t]*$/
                or next;
            push @headers, [$n, $v];
        }
        my %h;
        for (@headers) {
            my $k = lc $_->[0];
            $h{$k} = exists $h{$k} ? "$h{$k}, $_->[1]" : $_->[1];
        }

        if (($h{expect} // '') =~ /^100-continue$/i) {
            syswrite $c, "HTTP/1.1 100 Continue\r\n\r\n";
        }

        # the body
        my $body = '';
        my $chunked = 0;
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            $chunked = 1;
            while (1) {
                while ($buf !~ /\r?\n/) {
                    return unless fill($c, \$buf);
                }
                $buf =~ s/^([0-9a-fA-F]+)[^\r\n]*\r?\n//
                    or return bad($c);
                my $size = hex $1;
                if ($size == 0) {
                    # trailers up to an empty line
                    while (1) {
                        while ($buf !~ /\r?\n/) {
                            return unless fill($c, \$buf);
                        }
                        $buf =~ s/^([^\r\n]*)\r?\n//;
                        last if $1 eq '';
                    }
                    last;
                }
                while (length($buf) < $size + 2) {
                    return unless fill($c, \$buf);
                }
                $body .= substr $buf, 0, $size, '';
                $buf =~ s/^\r?\n// or return bad($c);
            }
        } elsif (defined $h{'content-length'}) {
            my $len = $h{'content-length'};
            return bad($c) unless $len =~ /^\d+$/;
            while (length($buf) < $len) {
                return unless fill($c, \$buf);
            }
            $body = substr $buf, 0, $len, '';
        }

        $seq++;
        my $rec = {
            method      => $method,
            uri         => $uri,
            version     => $version,
            headers     => \@headers,
            body_length => length $body,
            chunked     => $chunked,
            head_b64    => encode_base64($head, ''),
            conn        => $conn,
            seq         => $seq,
            time        => time,
        };
        # JSON::PP is slow on megabytes: base64 needs no escaping, so the
        # body goes in as is, first
        my $line = $json->encode($rec);
        substr $line, 1, 0,
            '"body_b64":"' . encode_base64($body, '') . '",';
        append_line($opt{log}, "$line\n");

        my $status = 200;
        if (($h{'x-test-upstream-status'} // '') =~ /^([1-5]\d\d)$/) {
            $status = $1;
        }

        my $conn_hdr = lc($h{connection} // '');
        my $keep = $version eq 'HTTP/1.1' ? $conn_hdr !~ /close/
                                          : $conn_hdr =~ /keep-alive/;
        my $resp = "HTTP/1.1 $status " . ($status == 200 ? 'OK' : 'Status')
            . "\r\nContent-Type: application/json\r\nContent-Length: "
            . length($BODY) . "\r\nConnection: "
            . ($keep ? 'keep-alive' : 'close') . "\r\n\r\n"
            . ($method eq 'HEAD' ? '' : $BODY);
        my $off = 0;
        while ($off < length $resp) {
            my $n = syswrite $c, $resp, length($resp) - $off, $off;
            return unless $n;
            $off += $n;
        }
        return unless $keep;
    }
}


sub bad {
    my ($c) = @_;
    syswrite $c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
        . "Connection: close\r\n\r\n";
    return;
}
