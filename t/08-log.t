#!/usr/bin/perl
#
# The line of every rejected request: formatted as nginx formats its own
# error lines (ngx_log_error(), with the request's context), one line per
# rejection, in every error_log of the location's chain that takes its
# level, never torn; and the lines of one pass of the event loop written
# to a file together.  That last part is made deterministic by stopping
# the worker (SIGSTOP) while 50 connections each send a refused request,
# so that it finds them all ready in one pass: the worker's write()
# syscalls (/proc/PID/io syscw) then count the 50 answers and about one
# write of the error log, where one write per line would make 100.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use DifyTest qw(uuid route);

DifyTest::require_module();

my $N = 50;

my $t = DifyTest->new(log_level => 'error');
$t->start_nginx(http => q{
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log off;
        error_log %%DIR%%/a.log error;
        error_log %%DIR%%/b.log info;

        location /v1/ {
            dify_status on;
            proxy_pass http://upstream;
        }

        location /deny/v1/ {
            deny all;
        }
    }
});

my $port = $t->port('PORT');
my $dir = $t->dir;
my $path = route(uuid(1), 'explode');

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh> // '';
}

sub request_bytes {
    my ($prefix) = @_;
    my $body = '{"document_ids":["' . uuid(2) . '"]}';
    return "PATCH $prefix$path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n"
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

sub read_answer {
    my ($s) = @_;
    my $buf = '';
    my $deadline = time + DifyTest::timeout(10);
    while (time < $deadline) {
        my $n = sysread($s, $buf, 65536, length $buf);
        last if !defined $n || $n == 0;
        if ($buf =~ /\r\n\r\n/ && $buf =~ /Content-Length: (\d+)/i) {
            my $len = $1;
            my ($h) = $buf =~ /^(.*?\r\n\r\n)/s;
            last if length($buf) >= length($h) + $len;
        }
    }
    return $buf;
}

sub wait_lines {
    my ($file, $re, $n) = @_;
    my $deadline = time + DifyTest::timeout(10);
    my @l;
    while (time < $deadline) {
        @l = grep { /$re/ } split /^/, slurp($file);
        last if @l >= $n;
        sleep 0.02;
    }
    return @l;
}

my $LINE = qr{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] \d+#\d+: \*\d+ };

# --- the format: nginx's own, for the same request --------------------------

{
    my $s = connect_one();
    print $s request_bytes('');
    like(read_answer($s), qr{^HTTP/1\.1 400 }, 'a bad action: 400');
    close $s;

    $s = connect_one();
    print $s request_bytes('/deny');
    like(read_answer($s), qr{^HTTP/1\.1 403 }, 'deny all: 403');
    close $s;

    my ($ours) = wait_lines("$dir/a.log", qr/dify_status: 400/, 1);
    my ($theirs) = wait_lines("$dir/a.log", qr/access forbidden by rule/, 1);

    ok(defined $ours && defined $theirs, 'both lines are in the log')
        or diag(slurp("$dir/a.log"));

    like($ours, qr{${LINE}dify_status: 400 invalid_action "[^"]+", key "[0-9a-f]{12}", client: 127\.0\.0\.1, server: , request: "PATCH \Q$path\E HTTP/1\.1", host: "127\.0\.0\.1:$port"\n\z},
         'the rejection line: prefix, message, key hash, request context');

    # everything but the connection number and the message is nginx's
    (my $a = $ours // '') =~ s/\*\d+ dify_status: .*?, client:/*N MSG, client:/;
    (my $b = $theirs // '') =~ s/\*\d+ access forbidden by rule, client:/*N MSG, client:/;
    $a =~ s{^(\S+ \S+ )}{};
    $b =~ s{^(\S+ \S+ )}{};
    $b =~ s{/deny/v1/}{/v1/};
    is($a, $b, 'the same prefix and context as nginx\'s own error line');

    my @b = wait_lines("$dir/b.log", qr/dify_status: 400|access forbidden/, 2);
    is(scalar @b, 2, 'the second error_log of the chain has both lines too');
    unlike(slurp("$dir/error.log"), qr/dify_status: 400/,
           'the http-level log, not in the server\'s chain, has none');
}

# --- one pass, many lines ---------------------------------------------------

SKIP: {
    my ($worker) = $t->worker_pids;
    skip 'no /proc/PID/io', 6 unless defined $worker && -r "/proc/$worker/io";

    my @s = map { connect_one() } 1 .. $N;

    # every connection accepted (and idle in the worker's epoll set)
    sleep DifyTest::timeout(0.5);

    my $before = slurp("$dir/a.log");
    my @before = split /^/, $before;

    kill 'STOP', $worker;
    my ($w0) = slurp("/proc/$worker/io") =~ /^syscw: (\d+)/m;
    print {$_} request_bytes('') for @s;
    sleep 0.2;
    kill 'CONT', $worker;

    my $ok = 0;
    for my $s (@s) {
        $ok++ if read_answer($s) =~ m{^HTTP/1\.1 400 };
    }
    is($ok, $N, "$N refused requests, $N answers");

    my @l = wait_lines("$dir/a.log", qr/dify_status: 400/, @before + $N);
    my @new = @l[scalar(grep { /dify_status: 400/ } @before) .. $#l];
    is(scalar @new, $N, "$N new lines, one a rejection");

    my $well = grep { /${LINE}dify_status: 400 invalid_action "[^"]+", key "[0-9a-f]{12}", client: 127\.0\.0\.1, server: , request: "PATCH [^"]+ HTTP\/1\.1", host: "[^"]+"\n\z/ } @new;
    is($well, $N, 'every line whole: none torn or interleaved');

    my %conn = map { /\*(\d+) / ? ($1 => 1) : () } @new;
    is(scalar keys %conn, $N, 'one line per connection');

    my ($w1) = slurp("/proc/$worker/io") =~ /^syscw: (\d+)/m;
    my $writes = $w1 - $w0;
    note("write syscalls of the worker for $N answers and $N lines "
         . "in two logs: $writes");

    # N answers (one writev each) and, per log file, a write per pass;
    # a write per line would be N more per log file.  Under valgrind the
    # process is valgrind's, whose scheduler writes to a pipe of its own
  SKIP: {
        skip 'valgrind: syscw counts valgrind\'s own writes', 1
            if DifyTest->valgrind;
        cmp_ok($writes, '<', $N + $N / 2,
               'the lines of one pass are written together, not one by one');
    }

    my @b = wait_lines("$dir/b.log", qr/dify_status: 400/, 1 + $N);
    is(scalar @b, 1 + $N, 'and to the second log of the chain');

    close $_ for @s;
}

# --- a reopen (USR1) moves the lines to the new file ------------------------

{
    rename "$dir/a.log", "$dir/a.log.old" or die "rename: $!";
    $t->signal_nginx('USR1');

    my $deadline = time + DifyTest::timeout(10);
    sleep 0.05 while !-e "$dir/a.log" && time < $deadline;
    ok(-e "$dir/a.log", 'USR1: nginx reopened the log');

    my $old = slurp("$dir/a.log.old");
    my $s = connect_one();
    print $s request_bytes('');
    like(read_answer($s), qr{^HTTP/1\.1 400 }, 'refused after the reopen');
    close $s;

    my @l = wait_lines("$dir/a.log", qr/dify_status: 400/, 1);
    is(scalar @l, 1, 'its line is in the new file');
    is(slurp("$dir/a.log.old"), $old, 'and not in the old one');
}

$t->done;
done_testing;
