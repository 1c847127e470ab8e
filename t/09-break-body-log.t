#!/usr/bin/perl
#
# Attempts to break the rejection line's per-pass write (issue 11's
# ngx_http_dify_status_log.c) and the one-pass body reader.
#
# An error_log that is a pipe (error_log stderr under docker, a FIFO, a
# log collector): nginx's own lines are at most NGX_MAX_ERROR_STR (2048)
# bytes, under PIPE_BUF (4096), so each write() of one is atomic: a
# signal while the pipe is full makes it fail with EINTR (the line is
# lost, whole), and the lines of two workers never interleave.  A write
# of a whole pass's lines (up to 32 KiB) is not atomic: when the pipe is
# full it writes what fits and, on a signal (SIGALRM with
# timer_resolution, any of nginx's signals), returns that partial count;
# whatever was not written must not be dropped mid-line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::INET;
use POSIX qw(mkfifo);
use Fcntl qw(O_RDONLY O_NONBLOCK);
use Time::HiRes qw(time sleep);
use DifyTest qw(uuid route);

DifyTest::require_module();

my $N = 120;

my $t = DifyTest->new(log_level => 'error');
my $dir = $t->dir;

mkfifo("$dir/fifo.log", 0600) or die "mkfifo: $!";

# the reader first, so that nginx's open() for writing does not block
sysopen(my $fifo, "$dir/fifo.log", O_RDONLY | O_NONBLOCK)
    or die "open fifo: $!";

$t->start_nginx(http => q{
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log off;
        error_log %%DIR%%/fifo.log error;

        location /v1/ {
            dify_status on;
            proxy_pass http://upstream;
        }
    }
});

my $port = $t->port('PORT');

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh> // '';
}

# a refused request (a bad action: 400) whose line is about 2 KB long
sub request_bytes {
    my ($i) = @_;
    my $path = route(uuid(1), 'explode') . '?pad=' . ('x' x 1500) . "&i=$i";
    my $body = '{"document_ids":["' . uuid(2) . '"]}';
    return "PATCH $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n"
         . "Authorization: Bearer dataset-logtest\r\n"
         . "Content-Type: application/json\r\n"
         . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

sub connect_one {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Proto => 'tcp', Timeout => 5)
        or die "connect: $!";
    $s->autoflush(1);
    return $s;
}

sub drain {
    my ($max) = @_;
    my $out = '';
    while (1) {
        my $n = sysread($fifo, $out, $max // 65536, length $out);
        last unless $n;
        last if defined $max;
    }
    return $out;
}

sub blocked_in_write {
    my ($pid) = @_;
    my $wchan = slurp("/proc/$pid/wchan");
    return 1 if $wchan =~ /pipe_w/;
    # x86_64: syscall 1 is write
    my $sc = slurp("/proc/$pid/syscall");
    return $sc =~ /^1 / && slurp("/proc/$pid/stat") =~ /^\d+ \(.*\) S /s;
}

my $LINE = qr{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] \d+#\d+: \*\d+ dify_status: 400 invalid_action "[^"]+", key "[0-9a-f]{12}", client: 127\.0\.0\.1, server: , request: "PATCH /v1/datasets/[^ ]+ HTTP/1\.1", host: "127\.0\.0\.1:\d+"\n\z};

# --- a pipe that fills, and a signal during the write ----------------------

SKIP: {
    my ($worker) = $t->worker_pids;
    skip 'no /proc/PID/syscall', 3
        unless defined $worker && -r "/proc/$worker/syscall";
    skip 'valgrind: the worker is valgrind\'s process', 3
        if DifyTest->valgrind;

    my @s = map { connect_one() } 1 .. $N;
    sleep DifyTest::timeout(0.5);

    # all the requests ready in one pass: one buffer of lines per pass
    kill 'STOP', $worker;
    my $i = 0;
    print {$_} request_bytes($i++) for @s;
    sleep 0.2;
    kill 'CONT', $worker;

    # the pipe (64 KiB) fills; each time the worker waits in write(),
    # a signal it handles (SIGALRM: what timer_resolution sends), then
    # room for the rest
    my $out = '';
    my $signals = 0;
    my $deadline = time + DifyTest::timeout(30);
    while (time < $deadline) {
        my $until = time + DifyTest::timeout(2);
        my $blocked = 0;
        until ($blocked = blocked_in_write($worker)) {
            last if time > $until;
            sleep 0.01;
        }
        last unless $blocked;
        kill 'ALRM', $worker;
        $signals++;
        sleep 0.05;

        # a little room: the write goes on, and waits again mid-buffer
        $out .= drain(6000);
    }
    $out .= drain();
    $out .= drain();

    note("signals sent while the worker waited in write(): $signals");
    cmp_ok($signals, '>', 0, 'the worker waited on the full pipe');

    my $ok = 0;
    for my $s (@s) {
        my $buf = '';
        $s->blocking(0);
        my $until = time + DifyTest::timeout(5);
        while (time < $until && $buf !~ m{\r\n\r\n}) {
            my $n = sysread($s, $buf, 65536, length $buf);
            last if defined $n && $n == 0;
            sleep 0.01 unless $n;
        }
        $ok++ if $buf =~ m{^HTTP/1\.1 400 };
    }
    is($ok, $N, "$N refused requests, $N answers");

    my @lines = split /^/, $out;
    note(scalar(@lines) . " lines read from the pipe");
    my @torn = grep { !/$LINE/ } @lines;
    is(scalar @torn, 0,
       'every line in the pipe whole: none cut by a partial write()')
        or diag(scalar(@lines) . " lines, " . scalar(@torn) . " torn, "
                . "e.g.:\n" . join('', map { substr($_, 0, 160) . "...\n" }
                                        @torn[0 .. ($#torn < 2 ? $#torn : 2)]));

    # nginx's own write of one line fails whole (EINTR) on a signal:
    # one line lost per signal at most
    cmp_ok($N - (@lines - @torn), '<=', $signals,
           'at most one line lost per signal, as with nginx\'s own writes');

    close $_ for @s;
}

$t->done;
close $fifo;
done_testing;
