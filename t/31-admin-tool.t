#!/usr/bin/perl
#
# tools/dify-status-limit against a live gateway: real redis-server (with
# a password, which the tool passes through REDISCLI_AUTH), real nginx
# with a low default limit, the recording upstream.  Lowering, raising,
# blocking and unblocking a key's limit take effect on its next request,
# without a reload; the key is read from stdin; the raw key never shows
# in Redis, in nginx's logs or in the tool's output.
#
# A change applies to the key's next request even when nginx had the key
# cached as limited (the tool waits out the cache's second), and what a
# key has spent is kept in units across a change of rate.  t/23 checks
# the same on two nginx instances, per limit.
#
# Rates are per hour: no refill during the test.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IPC::Open3 qw(open3);
use DifyTest;
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch policy);

DifyTest::require_module();

my $TOOL = "$FindBin::Bin/../tools/dify-status-limit";
our $PASSWORD = 'admin-tool-pw';

# the Redis timeout is scaled in valgrind mode: no fallback by accident
my $REDIS_TIMEOUT = 2 * (DifyTest->valgrind ? DifyTest::slow() : 1);

my $t = DifyTest->new;
$t->start_redis(password => $PASSWORD);
$t->start_nginx(http => qq{
    dify_status_redis %%REDIS%% password=$PASSWORD timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;

    log_format dify '\$status \$dify_status \$dify_status_action '
                    '\$dify_status_dataset_id \$dify_status_documents '
                    '\$dify_status_key \$dify_status_remaining';

    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/dify.log dify;

        location /v1 {
            dify_status on;
            dify_status_limit rate=3r/h;
            proxy_pass http://upstream;
        }
    }
});

# the worker's Redis connection is up once a request passes
for (1 .. 100) {
    last if patch($t, fresh_key('warm'))->{status} == 200;
    Time::HiRes::sleep(0.05);
}
$t->upstream_clear;

my @keys;                       # every raw key used, for the leak checks
my @outputs;                    # everything the tool printed

# runs the tool with $stdin on its stdin; returns (exit code, output)
sub tool {
    my ($stdin, @args) = @_;
    local $ENV{DIFY_REDIS_HOST} = '127.0.0.1';
    local $ENV{DIFY_REDIS_PORT} = $t->redis_port;
    local $ENV{DIFY_REDIS_PASSWORD} = $PASSWORD;
    local $ENV{REDISCLI_AUTH};
    delete $ENV{REDISCLI_AUTH};

    # the tool may exit before it reads its stdin (a usage error)
    local $SIG{PIPE} = 'IGNORE';
    my $pid = open3(my $in, my $out, undef, 'bash', $TOOL, @args);
    print $in $stdin if defined $stdin;
    close $in;
    my $output = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    push @outputs, $output;
    return ($? >> 8, $output);
}

sub tool_ok {
    my ($key, @args) = @_;
    my $name = join ' ', @args;
    my ($rc, $out) = tool("$key\n", @args);
    is $rc, 0, "dify-status-limit $name" or diag $out;
    return $out;
}

sub new_key {
    my $k = fresh_key(@_);
    push @keys, $k;
    return $k;
}

sub statuses {
    my ($key, $n) = @_;
    return join ' ', map { patch($t, $key)->{status} } 1 .. $n;
}

my ($out, $r);


# the default limit: 3 at once, then 429

my $k1 = new_key('default');
is statuses($k1, 4), '200 200 200 429', 'default limit: 3, then 429';

$out = tool_ok($k1, 'state', '-', '--rate', '3r/h');
like $out, qr/^remaining: 0 of 3$/m, 'state: nothing left';
like $out, qr/^limit:\s+3r\/h \(from --rate\), burst 3 \(from --rate's N\)$/m,
    'state: the defaults given, burst defaulting to the rate';
my ($next) = $out =~ /^next:\s+in (\d+)\.\d{3} s /m;
ok defined $next && $next > 1100 && $next <= 1200,
    'state: next request in about one interval (1200 s)' or diag $out;
like $out, qr/^key:\s+\Q${\ substr(key_hash($k1), 0, 12)}\E$/m,
    'state: the key as 12 hex digits of its hash';


# lowering a live key's limit: its next request

my $k2 = new_key('lower');
is statuses($k2, 1), '200', 'a key with state';
$out = tool_ok($k2, 'set', '-', 'rate=1', 'r/h', 'burst=1');
like $out, qr/rate 1r\/h, burst 1/, 'set: "rate=1 r/h" in two words';
is $t->redis('HGET', limit_key($k2), 'rate'), '1r/h', 'override rate';
is $t->redis('HGET', limit_key($k2), 'burst'), '1', 'override burst';
$r = patch($t, $k2);
is $r->{status}, 429, 'lowered: the next request is limited, no reload';
is policy($r)->{q}, 1, 'lowered: RateLimit-Policy shows the burst of 1'
    if $r->{headers}{'ratelimit-policy'};

$out = tool_ok($k2, 'state', '-', '--rate', '3r/h');
like $out, qr/^limit:\s+1r\/h \(from override\), burst 1 \(from override\)$/m,
    'state: the override wins over --rate';
like $out, qr/^remaining: 0 of 1$/m, 'state: nothing left under the override';


# raising a live key's limit before it is spent: with --reset, the key
# starts the new limit with a full bucket

my $k3 = new_key('raise');
is statuses($k3, 2), '200 200', 'two of the default three spent';
$out = tool_ok($k3, 'set', '-', 'rate=100r/h', 'burst=10', '--reset');
like $out, qr/state deleted/, 'set --reset: says the state is deleted';
is $t->redis('EXISTS', tat_key($k3)), 0, 'set --reset: no state in Redis';
$r = patch($t, $k3);
is $r->{status}, 200, 'raised: passes';
is policy($r)->{q}, 10, 'raised: RateLimit-Policy q=10'
    if $r->{headers}{'ratelimit-policy'};
is statuses($k3, 9), '200 200 200 200 200 200 200 200 200',
    'raised: 12 requests in all, where the default allowed 3';
is statuses($k3, 1), '429', 'raised: the new burst of 10 holds';

# without --reset the state is kept, in units: 2 requests spent of 3 at
# 3/h are 2 units of the new 100/h burst 10, so 8 are left

my $k3b = new_key('raisekeep');
is statuses($k3b, 2), '200 200', 'two of the default three spent';
$out = tool_ok($k3b, 'set', '-', 'rate=100r/h', 'burst=10');
like $out, qr/spent is kept, in units/, 'set: says the spent units are kept';
$out = tool_ok($k3b, 'state', '-', '--rate', '3r/h');
like $out, qr/^remaining: 8 of 10$/m,
    'state: 2 units spent of the new bucket of 10';
is statuses($k3b, 9), join(' ', (200) x 8, 429),
    'raised without --reset: exactly the 8 units left pass';
$t->upstream_clear;


# blocking and unblocking

my $k4 = new_key('block');
tool_ok($k4, 'set', '-', 'rate=100r/h', 'burst=10');
is statuses($k4, 1), '200', 'a key with its own limit passes';
$t->upstream_clear;

$out = tool_ok($k4, 'block', '-');
like $out, qr/blocked/, 'block: says so';
is $t->redis('HGET', limit_key($k4), 'blocked'), '1', 'block: blocked=1';
$t->reject_ok(patch($t, $k4), 403, 'forbidden', 'Insufficient permissions.',
              'blocked: 403, the documented body');

$out = tool_ok($k4, 'show', '-');
like $out, qr/^\s+blocked:\s+yes$/m, 'show: blocked';
like $out, qr/^\s+rate:\s+100r\/h$/m, 'show: the rate is kept';

my ($rc, $o) = tool(undef, 'unblock', '--hash', key_hash($k4));
is $rc, 0, 'unblock --hash HASH';
like $o, qr/unblocked/, 'unblock: says so';
is $t->redis('HGET', limit_key($k4), 'blocked'), undef, 'unblock: field gone';
is $t->redis('HGET', limit_key($k4), 'rate'), '100r/h',
    'unblock: the rate is kept';
is statuses($k4, 1), '200', 'unblocked: passes again';
$t->upstream_clear;


# remove and reset

tool_ok($k4, 'remove', '-');
is $t->redis('EXISTS', limit_key($k4)), 0, 'remove: the override is gone';
like tool_ok($k4, 'show', '-'), qr/override: none/, 'show: no override';
ok $t->redis('EXISTS', tat_key($k4)), 'the key has state';
tool_ok($k4, 'reset', '-');
is $t->redis('EXISTS', tat_key($k4)), 0, 'reset: the state is gone';


# raising the limit of a key nginx has just limited ($k1) and cached:
# the tool returns once the cached verdict is gone

is patch($t, $k1)->{status}, 429, 'the key is limited (and cached)';
$out = tool_ok($k1, 'set', '-', 'rate=100r/h', 'burst=100', '--reset');
like $out, qr/in force on every nginx from the key's next request/,
    'set: says when it is in force';
is patch($t, $k1)->{status}, 200, 'raised after being limited: passes at once';


# input checking; nothing reaches Redis

my %before = map { $_ => 1 } split /\n/, $t->redis_cli('--scan');
for my $case (
    [ "k\n", [ 'set', '-', 'rate=0r/m' ],            2, qr/invalid rate/ ],
    [ "k\n", [ 'set', '-', 'rate=5r/w' ],            2, qr/invalid rate/ ],
    [ "k\n", [ '--limit', 'a.b', 'show', '-' ],      2, qr/invalid limit/ ],
    [ "k\n", [ 'set', '-', 'rate=5r/m', 'burst=x' ], 2, qr/invalid burst/ ],
    [ "k\n", [ 'set', '-', 'rate=2000000r/s' ],      2, qr/invalid rate/ ],
    [ "k\n", [ 'set', '-' ],                         2, qr/give rate=/ ],
    [ "k\n", [ 'show', '-', '--reset' ],             2, qr/--reset goes/ ],
    [ "k\n", [ 'frob', '-' ],                        2, qr/unknown command/ ],
    [ "\n",  [ 'show', '-' ],                        2, qr/empty/ ],
    [ '',    [ 'show', '-' ],                        2, qr/empty/ ],
    [ undef, [ 'show', '--hash', 'abc' ],            2, qr/64 hex/ ],
    [ undef, [ 'show' ],                             2, qr/no KEY/ ],
    [ undef, [ '-p', 'x', 'show', '--hash', 'a' x 64 ], 2, qr/invalid port/ ],
) {
    my ($in, $args, $want, $msg) = @$case;
    my ($c, $text) = tool($in, @$args);
    is $c, $want, "exit $want: @$args";
    like $text, $msg, "message: @$args";
}
{
    local $PASSWORD = 'wrong';
    my ($c, $text) = tool("k\n", 'show', '-');
    is $c, 1, 'a wrong password: exit 1';
    like $text, qr/WRONGPASS|NOAUTH/, 'a wrong password: Redis says why';
}
{
    my ($c, $text) = tool(undef, '--help');
    is $c, 0, '--help: exit 0';
    like $text, qr/^Usage: dify-status-limit/m, '--help: usage';
}
my @new = grep { !$before{$_} } split /\n/, $t->redis_cli('--scan');
is "@new", '', 'rejected input wrote nothing to Redis';


# the raw keys are nowhere: not in Redis (names or values), not in
# nginx's logs, not in the tool's output

my $scan = $t->redis_cli('--scan');
my @names = split /\n/, $scan;
my @odd = grep { !/^dify:status:\{[0-9a-f]{64}\}:(?:tat|limit)$/ } @names;
is "@odd", '', 'Redis holds only {hash}:tat and {hash}:limit keys';
my %ours = map { key_hash($_) => 1 } @keys;
ok scalar(grep { /\{([0-9a-f]{64})\}/ && $ours{$1} } @names),
    'among them, the hashes of the test\'s keys';

my $values = '';
for my $n (@names) {
    my $type = $t->redis('TYPE', $n);
    if ($type eq 'string') {
        $values .= $t->redis('GET', $n) . "\n";
    } elsif ($type eq 'hash') {
        $values .= join("\n", @{ $t->redis('HGETALL', $n) }) . "\n";
    }
}

my $error_log = $t->error_log;
my $access_log = DifyTest::_slurp($t->dir . '/dify.log');
my $tool_out = join '', @outputs;
ok length $access_log, 'the access log has lines';

for my $k (@keys) {
    my $secret = substr $k, length 'dataset-';
    unlike $scan, qr/\Q$secret\E/, "key $k: not in Redis key names";
    unlike $values, qr/\Q$secret\E/, "key $k: not in Redis values";
    unlike $error_log, qr/\Q$secret\E/, "key $k: not in nginx's error log";
    unlike $access_log, qr/\Q$secret\E/, "key $k: not in the access log";
    unlike $tool_out, qr/\Q$secret\E/, "key $k: not in the tool's output";
}

$t->done;
done_testing;
