#!/usr/bin/perl
#
# tools/run-gateway (make run): starts Redis, the stand-in Dify and nginx
# from conf/dify-status-standalone.conf, prints demo commands that show
# what they say they show, and stops everything it started on SIGTERM
# (Ctrl-C does the same; a test cannot count on SIGINT reaching it, as a
# background job may inherit it ignored).  Everything runs in a private
# RUN_DIR on free ports.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use DifyTest qw(envelope);

DifyTest::require_module();
plan skip_all => 'run-gateway runs nginx without a sanitizer runtime'
    if $DifyTest::SANITIZE eq 'asan';

my $TOP = "$FindBin::Bin/..";
my $RUN = tempdir('dify-run-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $RUN;

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1) or die $!;
    return $s->sockport;
}

# the processes run-gateway started: their command lines name $RUN
sub ours {
    my @pids;
    for my $f (glob '/proc/[0-9]*/cmdline') {
        open my $fh, '<', $f or next;
        my $cmd = do { local $/; <$fh> } // '';
        next unless index($cmd, $RUN) >= 0;
        my ($pid) = $f =~ m{/proc/(\d+)/};
        push @pids, $pid unless $pid == $$;
    }
    return @pids;
}

my $port = free_port();
my $out = "$RUN/run-gateway.out";
my $pid;

END {
    # whatever happened, nothing of this test stays behind
    if ($pid && kill 0, $pid) {
        kill 'TERM', $pid;
        waitpid $pid, 0;
    }
    kill 'KILL', ours() if $RUN;
}

$pid = fork // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>', $out or die;
    open STDERR, '>&', \*STDOUT or die;
    open STDIN, '<', '/dev/null' or die;
    $ENV{PORT} = $port;
    $ENV{RUN_DIR} = $RUN;
    $ENV{DIFY_MODULE} = $DifyTest::MODULE;
    delete $ENV{DIFY_UPSTREAM};
    exec 'bash', "$TOP/tools/run-gateway" or die "exec: $!";
}

my $deadline = time + DifyTest::timeout(30);
my $text = '';
until ($text =~ /Following the access log/) {
    last if time > $deadline || waitpid($pid, WNOHANG) == $pid;
    sleep 0.1;
    $text = DifyTest::_slurp($out);
}
like $text, qr/Following the access log/, 'run-gateway is up'
    or BAIL_OUT("run-gateway did not start:\n$text");
like $text, qr{gateway\s+http://127\.0\.0\.1:$port\b}, 'on PORT';
ok -s "$RUN/nginx/nginx.conf", 'the rendered config is in RUN_DIR';
unlike DifyTest::_slurp("$RUN/nginx/nginx.conf"), qr/@[A-Z_]+@/,
    'no placeholder left';

my $demo = "$RUN/demo-commands.sh";
ok -s $demo, 'the demo commands are saved';
like $text, qr/\Q${\ DifyTest::_slurp($demo)}\E/, '... and were printed';


# the demo, as a user pastes it

my $res = `bash -v $demo 2>&1`;
my @blocks = split /^(?=# \d+\. )/m, $res;
my %step = map { /^# (\d+)\. / ? ($1 => $_) : () } @blocks;
is scalar(keys %step), 11, 'eleven steps';

my $p = qr/\{"status":/;
like $step{1}, qr{^HTTP/1\.1 200 OK\r?$}m, '1: 200';
like $step{1}, qr/^\{"result": "success"\}$/m, '1: the documented body';
like $step{1}, qr/^RateLimit: "default";r=4;t=\d+\r?$/m,
    '1: RateLimit, 4 left';
like $step{2}, qr/^\Q${\ envelope(404, 'not_found', 'Dataset not found.')}\E$/m,
    '2: 404 not_found';
like $step{3}, qr{^HTTP/1\.1 401 }m, '3: 401';
like $step{3}, qr/^WWW-Authenticate: Bearer realm="api"\r?$/m,
    '3: WWW-Authenticate';
like $step{3}, qr/^$p 401, "code": "unauthorized"/m, '3: unauthorized';
like $step{4},
    qr/^\Q{"status": 400, "code": "invalid_action", "message": "Invalid action."}\E$/m,
    '4: invalid_action, byte for byte';
like $step{5}, qr/^$p 415, "code": "unsupported_media_type"/m, '5: 415';
like $step{6}, qr/^$p 413, "code": "request_entity_too_large"/m, '6: 413';
like $step{7},
    qr/^\Q${\ envelope(400, 'bad_request', 'Invalid JSON payload received or JSON payload is empty.')}\E$/m,
    '7: bad_request';
like $step{8}, qr/^$p 400, "code": "invalid_param", "message": "document_ids\[1\] /m,
    '8: invalid_param, naming the item';
like $step{9}, qr/^(?:200 ){4,5}(?:429 ){3,4}$/m, '9: 200s, then 429s';
like $step{9}, qr{^HTTP/1\.1 429 }m, '9: 429 in full';
like $step{9}, qr/^Retry-After: \d+\r?$/m, '9: Retry-After';
like $step{9}, qr/^$p 429, "code": "too_many_requests"/m, '9: too_many_requests';
like $step{10}, qr/^dify_status_requests_passed_total [1-9]\d*$/m,
    '10: metrics';
like $step{11}, qr/^remaining: 0 of 5$/m, '11: state of the limited key';
like $step{11}, qr/: rate 100r\/m, burst 20$/m, '11: set';
like $step{11}, qr/^(?:200 ){10}$/m, '11: the raised key passes 10 times';
like $step{11},
    qr/^\Q{"status": 403, "code": "forbidden", "message": "Insufficient permissions."}\E$/m,
    '11: blocked, 403';
like $step{11}, qr/unblocked\n.*?^\{"result": "success"\}$/ms, '11: unblocked, 200';
unlike $res, qr/command not found|No such file|rror:/, 'no shell errors'
    or diag $res;

my $access = DifyTest::_slurp("$RUN/nginx/logs/access.log");
like $access, qr/ 429 dify=limited action=disable /, 'the access log';
unlike $access . DifyTest::_slurp("$RUN/nginx/logs/error.log"),
    qr/dataset-demo-/, 'the demo keys are in no log';


# a second one may not start beside it

my $second = `PORT=$port RUN_DIR=$RUN bash $TOP/tools/run-gateway 2>&1`;
isnt $? >> 8, 0, 'a second run-gateway on the same RUN_DIR: refused';
like $second, qr/another run-gateway/, '... and says why';


# SIGTERM stops everything it started

my @running = ours();
ok @running >= 4, 'nginx, redis, stand-in and tail run' or diag "@running";
kill 'TERM', $pid;
$deadline = time + DifyTest::timeout(20);
my $gone = 0;
while (time < $deadline) {
    if (waitpid($pid, WNOHANG) == $pid) {
        $gone = 1;
        last;
    }
    sleep 0.1;
}
ok $gone, 'run-gateway exits on SIGTERM';
$pid = undef;
sleep 0.2;
is join(' ', ours()), '', 'nothing it started is left';
like DifyTest::_slurp($out), qr/run-gateway: stopped/, 'it says so';
ok !IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                          Proto => 'tcp'), 'the port is closed';


# a port in use is refused before anything starts

{
    my $busy = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
        LocalPort => 0, Proto => 'tcp', Listen => 1) or die $!;
    my $bp = $busy->sockport;
    my $o = `PORT=$bp RUN_DIR=$RUN bash $TOP/tools/run-gateway 2>&1`;
    is $? >> 8, 1, 'a port in use: exit 1';
    like $o, qr/port $bp of 127\.0\.0\.1 is in use/, '... and says so';
    is join(' ', ours()), '', '... and starts nothing';
}

done_testing;
