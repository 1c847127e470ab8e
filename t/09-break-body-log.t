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

# a syslog server
my $syslog = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                   Proto => 'udp') or die "udp: $!";
my $syslog_port = $syslog->sockport;

my $http = q{
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log off;
        error_log %%DIR%%/fifo.log error;

        location /v1/ {
            dify_status on;
            proxy_pass http://upstream;
        }
    }

    # more files than the 4 buffers, syslog, memory, and a log whose
    # level the line is not at
    server {
        listen 127.0.0.1:%%PORT2%%;
        access_log off;
        error_log %%DIR%%/c1.log error;
        error_log %%DIR%%/c2.log warn;
        error_log %%DIR%%/c3.log notice;
        error_log %%DIR%%/c4.log info;
        error_log %%DIR%%/c5.log error;
        error_log %%DIR%%/c6.log error;
        error_log %%DIR%%/crit.log crit;
        error_log syslog:server=127.0.0.1:SYSLOG_PORT,tag=difytest error;
        error_log memory:1m error;

        location /v1/ {
            dify_status on;
            proxy_pass http://upstream;
        }
    }
};
$http =~ s/SYSLOG_PORT/$syslog_port/;

$t->start_nginx(http => $http);

my $port = $t->port('PORT');

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh> // '';
}

# a refused request (a bad action: 400); its line is about 2 KB long with
# the default padding
sub request_bytes {
    my ($i, $pad) = @_;
    my $path = route(uuid(1), 'explode') . '?pad=' . ('x' x ($pad // 1500))
             . "&i=$i";
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
    skip 'no /proc/PID/syscall', 4
        unless defined $worker && -r "/proc/$worker/syscall";
    skip 'valgrind: the worker is valgrind\'s process', 4
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

# --- a chain of 6 files, syslog, memory; clients gone before the flush -----

{
    my $port2 = $t->port('PORT2');
    my ($worker) = $t->worker_pids;
    my $M = 60;

    my @s = map {
        IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port2", Proto => 'tcp',
                              Timeout => 5) or die "connect: $!"
    } 1 .. $M;
    $_->autoflush(1) for @s;
    sleep DifyTest::timeout(0.5);

    # half the clients close right after sending: the request is gone
    # (finalized, its pool freed) before the end of the pass writes
    kill 'STOP', $worker;
    for my $i (0 .. $#s) {
        my $req = request_bytes("c$i", 100);
        $req =~ s/:\Q$port\E\r\n/:$port2\r\n/;
        print {$s[$i]} $req;
        close $s[$i] if $i % 2;
    }
    sleep 0.2;
    kill 'CONT', $worker;

    my $ok = 0;
    for my $i (grep { !($_ % 2) } 0 .. $#s) {
        my $buf = '';
        my $until = time + DifyTest::timeout(10);
        while (time < $until && $buf !~ m{\r\n\r\n}) {
            my $n = sysread($s[$i], $buf, 65536, length $buf);
            last unless $n;
        }
        $ok++ if $buf =~ m{^HTTP/1\.1 400 };
        close $s[$i];
    }
    is($ok, $M / 2, 'the clients that stayed got their 400');

    my $line2 = qr{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] \d+#\d+: \*\d+ dify_status: 400 invalid_action "[^"]+", key "[0-9a-f]{12}", client: 127\.0\.0\.1, server: , request: "PATCH /v1/datasets/[^ ]+&i=c(\d+) HTTP/1\.1", host: "127\.0\.0\.1:\d+"\n\z};

    my $deadline = time + DifyTest::timeout(10);
    for my $f (qw(c1 c2 c3 c4 c5 c6)) {
        my @l;
        while (1) {
            @l = grep { /dify_status:/ } split /^/, slurp("$dir/$f.log");
            last if @l >= $M || time > $deadline;
            sleep 0.05;
        }
        my %i = map { /$line2/ ? ($1 => 1) : () } @l;
        is(scalar @l, $M, "$f.log: $M lines");
        is(scalar keys %i, $M, "$f.log: each whole, one per request");
    }

    is(scalar(grep { /dify_status:/ } split /^/, slurp("$dir/crit.log")), 0,
       'crit.log: none (the line is at error)');

    my %sys;
    $syslog->blocking(0);
    my $until = time + DifyTest::timeout(5);
    while (keys %sys < $M && time < $until) {
        my $d;
        if (defined $syslog->recv($d, 65536) && length $d) {
            $sys{$1}++ if $d =~ /difytest: .*dify_status: 400 .*&i=c(\d+) HTTP/;
            next;
        }
        sleep 0.02;
    }
    is(scalar keys %sys, $M, "syslog: $M datagrams, one per request");
    is(scalar(grep { $_ != 1 } values %sys), 0, 'syslog: none twice');
}

# --- the worker told to exit (SIGTERM, SIGQUIT) right after a pass --------

for my $sig (qw(TERM QUIT)) {
    my $port2 = $t->port('PORT2');
    my ($worker) = $t->worker_pids;
    my $M = 30;

    my $before = grep { /dify_status:/ } split /^/, slurp("$dir/c1.log");

    my @s = map {
        IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port2", Proto => 'tcp',
                              Timeout => 5) or die "connect: $!"
    } 1 .. $M;
    $_->autoflush(1) for @s;
    sleep DifyTest::timeout(0.5);

    kill 'STOP', $worker;
    for my $i (0 .. $#s) {
        my $req = request_bytes("$sig$i", 100);
        $req =~ s/:\Q$port\E\r\n/:$port2\r\n/;
        print {$s[$i]} $req;
    }
    sleep 0.2;
    kill 'CONT', $worker;
    sleep 0.001;
    kill $sig, $worker;

    my %answered;
    for my $i (0 .. $#s) {
        my $buf = '';
        my $until = time + DifyTest::timeout(10);
        while (time < $until && $buf !~ m{\r\n\r\n}) {
            my $n = sysread($s[$i], $buf, 65536, length $buf);
            last unless $n;
        }
        $answered{$i} = 1 if $buf =~ m{^HTTP/1\.1 400 };
        close $s[$i];
    }

    # the master starts a new worker
    my $deadline = time + DifyTest::timeout(10);
    sleep 0.05 while time < $deadline
        && !grep { $_ != $worker } $t->worker_pids;

    my %logged;
    $logged{$_}++ for map { /&i=$sig(\d+) HTTP/ ? $1 : () }
                      split /^/, slurp("$dir/c1.log");
    note("SIG$sig: " . scalar(keys %answered) . " answered, "
         . scalar(keys %logged) . " logged");
    is(scalar(grep { !$logged{$_} } keys %answered), 0,
       "SIG$sig: every request answered has its line");
    is(scalar(grep { $_ != 1 } values %logged), 0,
       "SIG$sig: no line twice");
}

$t->done;
close $fifo;

# --- two workers, one pipe: their lines must not interleave ----------------

SKIP: {
    skip 'valgrind: one process', 3 if DifyTest->valgrind;

    my $t2 = DifyTest->new(log_level => 'error');
    my $dir2 = $t2->dir;
    mkfifo("$dir2/fifo.log", 0600) or die "mkfifo: $!";
    sysopen(my $rd, "$dir2/fifo.log", O_RDONLY | O_NONBLOCK)
        or die "open fifo: $!";

    $t2->start_nginx(workers => 2, http => q{
        server {
            listen 127.0.0.1:%%PORT%% reuseport;
            access_log off;
            error_log %%DIR%%/fifo.log error;

            location /v1/ {
                dify_status on;
                proxy_pass http://upstream;
            }
        }
    });

    $port = $t2->port('PORT');
    my @w = $t2->worker_pids;
    is(scalar @w, 2, 'two workers');

    my $M = 160;
    my @s = map { connect_one() } 1 .. $M;
    sleep DifyTest::timeout(0.5);

    kill 'STOP', @w;
    my $i = 0;
    print {$_} request_bytes("w" . $i++) for @s;
    sleep 0.2;
    kill 'CONT', @w;

    # the pipe fills; then it is read a little at a time, so that both
    # workers, waiting in write(), take turns
    my $out = '';
    my $deadline = time + DifyTest::timeout(30);
    my $quiet = 0;
    while (time < $deadline && $quiet < 50) {
        sleep 0.01;
        my $n = sysread($rd, $out, 1500, length $out);
        $quiet = $n ? 0 : $quiet + 1;
    }

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
        close $s;
    }
    is($ok, $M, "$M refused requests, $M answers");

    my @lines = split /^/, $out;
    my %pids = map { /^\S+ \S+ \[error\] (\d+)#/ ? ($1 => 1) : () } @lines;
    note(scalar(@lines) . " lines from " . scalar(keys %pids) . " workers");
    my @torn = grep { !/$LINE/ } @lines;
    is(scalar @torn, 0, 'two workers, one pipe: every line whole')
        or diag(scalar(@torn) . " torn of " . scalar(@lines) . ", e.g.:\n"
                . join('', map { substr($_, 0, 160) . "...\n" }
                                @torn[0 .. ($#torn < 2 ? $#torn : 2)]));

    $t2->done;
    close $rd;
}

# --- levels: a log above the line's level, debug_connection ---------------

{
    my $t3 = DifyTest->new(log_level => 'error');
    my $dir3 = $t3->dir;

    $t3->start_nginx(events => 'debug_connection 127.0.0.2;', http => q{
        server {
            listen 127.0.0.1:%%PORT%%;
            access_log off;
            error_log %%DIR%%/crit.log crit;
            error_log %%DIR%%/error3.log error;

            location /v1/ {
                dify_status on;
                proxy_pass http://upstream;
            }

            location /deny/v1/ {
                deny all;
            }
        }

        server {
            listen 127.0.0.1:%%PORT2%%;
            access_log off;
            error_log %%DIR%%/notice.log notice;

            location /v1/ {
                dify_status on;
                dify_status_log_level info;
                proxy_pass http://upstream;
            }
        }
    });

    my $one = sub {
        my ($from, $p, $prefix, $tag) = @_;
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$p",
                                      LocalAddr => $from, Proto => 'tcp',
                                      Timeout => 5) or die "connect: $!";
        $s->autoflush(1);
        $port = $p;
        my $req = request_bytes($tag, 10);
        $req =~ s{^PATCH /}{PATCH $prefix/};
        print $s $req;
        my $buf = '';
        my $until = time + DifyTest::timeout(10);
        while (time < $until && $buf !~ m{\r\n\r\n}) {
            my $n = sysread($s, $buf, 65536, length $buf);
            last unless $n;
        }
        close $s;
        return $buf =~ m{^HTTP/1\.1 (\d+)} ? $1 : 0;
    };

    my $p1 = $t3->port('PORT');
    my $p2 = $t3->port('PORT2');

    is($one->('127.0.0.1', $p1, '', 'plain'), 400, 'refused');
    is($one->('127.0.0.1', $p1, '/deny', 'plaindeny'), 403, 'denied');
    is($one->('127.0.0.2', $p1, '', 'dbg'), 400, 'refused, debug_connection');
    is($one->('127.0.0.2', $p1, '/deny', 'dbgdeny'), 403,
       'denied, debug_connection');
    is($one->('127.0.0.1', $p2, '', 'quiet'), 400, 'refused, level info');
    sleep 0.3;

    my $crit = slurp("$dir3/crit.log");
    my $err = slurp("$dir3/error3.log");
    unlike($crit, qr/i=plain /, 'crit log: no line at error');
    like($err, qr/dify_status: 400 .*i=plain /, 'error log: the line');
    like($crit, qr/access forbidden.*dbgdeny/,
         'debug_connection: nginx\'s own line in the crit log');
    like($crit, qr/dify_status: 400 .*i=dbg /,
         'debug_connection: the rejection line there too');
    unlike(slurp("$dir3/notice.log"), qr/dify_status:/,
           'dify_status_log_level info, error_log notice: no line');

    $t3->done;
}

done_testing;
