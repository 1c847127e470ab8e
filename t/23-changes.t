#!/usr/bin/perl
#
# Changes apply at once (issue 12, items 4-6), on two nginx instances of
# two workers each, sharing one Redis: for a key that both nodes have
# cached as limited, and one they have cached as "can never pass", every
# change through tools/dify-status-limit (set, block, unblock, remove,
# reset, --limit NAME) is in force for the key's next request on every node and
# every worker once the tool returns; the same changes written with
# plain redis-cli are in force a second later.  While nothing changes,
# the cached rejections cost Redis no script call.  A change of rate
# keeps the units a key has spent.
#
# Every worker is reached by listening with "reuseport" (the kernel
# spreads new connections over the workers' sockets) and sending
# requests until both workers' pids ($pid in a header) have answered.
# Rates are per hour: no refill during the test.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IPC::Open3 qw(open3);
use DifyTest qw(uuid);
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch limits);

DifyTest::require_module();

my $TOOL = "$FindBin::Bin/../tools/dify-status-limit";
my $REDIS_TIMEOUT = (DifyTest->valgrind ? DifyTest::slow() : 1) * 2;
my $WORKERS = DifyTest->valgrind ? 1 : 2;

my $SERVER = q{
        add_header X-Pid $pid always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=2r/h;
            proxy_pass http://upstream;
        }
        location /n/v1/ {
            dify_status on;
            dify_status_limit rate=100r/h;
            dify_status_limit name=small rate=2r/h;
            proxy_pass http://upstream;
        }
        location /r/v1/ {
            dify_status on;
            dify_status_limit rate=100r/h;
            proxy_pass http://upstream;
        }
        location /d/v1/ {
            dify_status on;
            dify_status_limit rate=2r/h cost=documents;
            proxy_pass http://upstream;
        }
        location /nolimit/v1/ {
            dify_status on;
            proxy_pass http://upstream;
        }
};

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(workers => 2, http => qq{
    dify_status_redis %%REDIS%% timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
$SERVER
    }
});

my $tb = DifyTest->new;
my $up_port = $t->upstream_port;
(my $server_b = $SERVER) =~ s{proxy_pass http://upstream;}
                              {proxy_pass http://127.0.0.1:$up_port;}g;
$tb->start_nginx(no_upstream => 1, upstream_block => 0, workers => 2,
    http => qq{
    dify_status_redis 127.0.0.1:${\ $t->redis_port} timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
$server_b
    }
});

my @NODES = ($t, $tb);
my @PORTS = ($t->port('PORT'), $tb->port('PORT'));

# every worker of both nodes has its Redis connection
for my $i (0, 1) {
    my $ok = 0;
    for (1 .. 200) {
        my $r = patch($t, fresh_key('warm'), prefix => '/nolimit/v1',
                      port => $PORTS[$i]);
        $ok++ if $r->{status} == 200;
        last if $ok >= 8;
        Time::HiRes::sleep(0.02);
    }
}
$t->upstream_clear;

sub script_calls {
    my $s = $t->redis('INFO', 'commandstats');
    my $n = 0;
    $n += $1 while $s =~ /^cmdstat_eval(?:sha)?:calls=(\d+)/mg;
    return $n;
}

# requests on both nodes until every worker of each has answered:
# "node:status" for each answer, and whether every worker was seen
sub every_worker {
    my ($key, %o) = @_;
    my (@out, $all);
    $all = 1;
    for my $i (0, 1) {
        my %seen;
        for (1 .. 60) {
            my $r = patch($t, $key, port => $PORTS[$i], %o);
            push @out, "$i:$r->{status}";
            $seen{ $r->{headers}{'x-pid'} // 'none' }++;
            last if keys %seen >= $WORKERS && @out >= 2;
        }
        $all = 0 if keys %seen < $WORKERS;
    }
    return (\@out, $all);
}

sub all_are {
    my ($key, $status, $name, %o) = @_;
    my ($out, $all) = every_worker($key, %o);
    my @bad = grep { !/:$status$/ } @$out;
    ok !@bad && $all, "$name: $status on every node and worker"
        or diag "answers: @$out; every worker seen: $all";
}

# the key limited (or never passing) and cached on both nodes: a round
# of requests then costs Redis nothing
sub cached_everywhere {
    my ($key, $status, %o) = @_;
    all_are($key, $status, 'before the change', %o);
    SKIP: {
        skip 'valgrind: too slow for the cache\'s second', 1
            if DifyTest->valgrind;
        my $before = script_calls();
        my @r = map { patch($t, $key, port => $PORTS[ $_ % 2 ], %o) } 0 .. 3;
        is script_calls() - $before, 0,
            'cached on both nodes: refused without a script call'
            or diag join ' ', map { $_->{status} } @r;
    }
}

sub tool {
    my ($key, @args) = @_;
    local $ENV{DIFY_REDIS_HOST} = '127.0.0.1';
    local $ENV{DIFY_REDIS_PORT} = $t->redis_port;
    local $SIG{PIPE} = 'IGNORE';
    my $pid = open3(my $in, my $out, undef, 'bash', $TOOL, @args);
    print $in "$key\n";
    close $in;
    my $output = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    is $? >> 8, 0, "dify-status-limit @args" or diag $output;
    return $output;
}

# a limited key, cached on both nodes
sub limited_key {
    my ($tag, %o) = @_;
    my $key = fresh_key($tag);
    patch($t, $key, port => $PORTS[0], %o) for 1 .. 2;
    cached_everywhere($key, 429, %o);
    return $key;
}

my @THREE = (ids => [ map { uuid($_) } 1 .. 3 ]);

# ---------------------------------------------------------------------------
subtest 'through the admin tool: in force when it returns' => sub {
    my $k = limited_key('raise');
    tool($k, 'set', '-', 'rate=100r/h');
    all_are($k, 200, 'raised');

    $k = limited_key('block');
    tool($k, 'block', '-');
    all_are($k, 403, 'blocked');
    tool($k, 'set', '-', 'rate=100r/h');
    all_are($k, 403, 'blocked, whatever its rate');
    tool($k, 'unblock', '-');
    all_are($k, 200, 'unblocked');

    $k = limited_key('reset');
    tool($k, 'reset', '-');
    my @r = map { patch($t, $k, port => $PORTS[ $_ % 2 ]) } 0 .. 2;
    is join(' ', map { $_->{status} } @r), '200 200 429',
        'reset: a full bucket (2) at once, across the nodes';

    # remove: an override of 1 r/h, limited; back to the default 100 r/h
    $k = fresh_key('remove');
    $t->redis('HSET', limit_key($k), 'rate', '1r/h');
    patch($t, $k, prefix => '/r/v1', port => $PORTS[0]);
    cached_everywhere($k, 429, prefix => '/r/v1');
    tool($k, 'remove', '-');
    all_are($k, 200, 'override removed', prefix => '/r/v1');

    # can never pass: 3 documents, burst 2
    $k = fresh_key('never');
    is patch($t, $k, prefix => '/d/v1', @THREE)->{status}, 429, 'never passes';
    cached_everywhere($k, 429, prefix => '/d/v1', @THREE);
    tool($k, 'set', '-', 'burst=100');
    all_are($k, 200, 'can never pass, raised', prefix => '/d/v1', @THREE);

    # a named limit: --limit small
    $k = limited_key('named', prefix => '/n/v1');
    tool($k, '--limit', 'small', 'set', '-', 'rate=100r/h');
    is $t->redis('HGET', limit_key($k), 'small.rate'), '100r/h',
        '--limit small writes small.rate';
    all_are($k, 200, 'named limit raised', prefix => '/n/v1');
    tool($k, '--limit', 'small', 'reset', '-');
    is $t->redis('EXISTS', tat_key($k) . ':small'), 0,
        '--limit small reset: that state only';
    is $t->redis('EXISTS', tat_key($k)), 1, 'the default limit\'s state is kept';
};

subtest 'through redis-cli: in force a second later' => sub {
    my $k = limited_key('cli-raise');
    $t->redis_cli('HSET', limit_key($k), 'rate', '100r/h');
    Time::HiRes::sleep(1.1);
    all_are($k, 200, 'HSET rate');

    $k = limited_key('cli-block');
    $t->redis_cli('HSET', limit_key($k), 'blocked', '1');
    Time::HiRes::sleep(1.1);
    all_are($k, 403, 'HSET blocked');
    $t->redis_cli('HSET', limit_key($k), 'rate', '100r/h');
    $t->redis_cli('HDEL', limit_key($k), 'blocked');
    Time::HiRes::sleep(1.1);
    all_are($k, 200, 'HDEL blocked');

    $k = limited_key('cli-reset');
    $t->redis_cli('DEL', tat_key($k));
    Time::HiRes::sleep(1.1);
    my @r = map { patch($t, $k, port => $PORTS[ $_ % 2 ]) } 0 .. 2;
    is join(' ', map { $_->{status} } @r), '200 200 429', 'DEL: a full bucket';

    $k = fresh_key('cli-never');
    patch($t, $k, prefix => '/d/v1', @THREE);
    cached_everywhere($k, 429, prefix => '/d/v1', @THREE);
    $t->redis_cli('HSET', limit_key($k), 'burst', '100');
    Time::HiRes::sleep(1.1);
    all_are($k, 200, 'can never pass, HSET burst', prefix => '/d/v1', @THREE);

    $k = fresh_key('cli-remove');
    $t->redis('HSET', limit_key($k), 'rate', '1r/h');
    patch($t, $k, prefix => '/r/v1', port => $PORTS[1]);
    cached_everywhere($k, 429, prefix => '/r/v1');
    $t->redis_cli('DEL', limit_key($k));
    Time::HiRes::sleep(1.1);
    all_are($k, 200, 'DEL the override', prefix => '/r/v1');

    $k = limited_key('cli-named', prefix => '/n/v1');
    $t->redis_cli('HSET', limit_key($k), 'small.burst', '50');
    Time::HiRes::sleep(1.1);
    all_are($k, 200, 'HSET small.burst', prefix => '/n/v1');
};

subtest 'a change of rate keeps the spent units' => sub {
    # 1 of 2 spent at 2/h (1800 s owed); at 10/h burst 2 that is still
    # 1 unit (360 s), not 1800 s (5 units: an empty bucket)
    my $k = fresh_key('units');
    is patch($t, $k, port => $PORTS[0])->{status}, 200, 'one spent';
    tool($k, 'set', '-', 'rate=10r/h', 'burst=2');
    my @r = map { patch($t, $k, port => $PORTS[ $_ % 2 ]) } 1 .. 2;
    is join(' ', map { $_->{status} } @r), '200 429',
        'exactly the one unit left passes';
    is limits($r[0])->{default}{r}, 0, 'r=0 after it';

    my $k2 = fresh_key('units-cli');
    patch($t, $k2, port => $PORTS[1]) for 1 .. 1;
    $t->redis_cli('HSET', limit_key($k2), 'rate', '1r/d', 'burst', '3');
    @r = map { patch($t, $k2, port => $PORTS[ $_ % 2 ]) } 1 .. 3;
    is join(' ', map { $_->{status} } @r), '200 200 429',
        'redis-cli 1r/d burst 3: the 2 units left pass';
    my ($tat, $iv) = split /\./, $t->redis('GET', tat_key($k2));
    is $iv, 86400e6, 'the state is now kept at a day\'s interval';

    # a named limit, through the tool's state
    my $k3 = fresh_key('units-named');
    patch($t, $k3, prefix => '/n/v1', port => $PORTS[0]);
    tool($k3, '--limit', 'small', 'set', '-', 'rate=60r/h', 'burst=4');
    my $out = tool($k3, '--limit', 'small', 'state', '-', '--rate', '2r/h');
    like $out, qr/^remaining: 3 of 4$/m, 'state --limit small: 1 of 4 spent';
};

$tb->done;
$t->done;
done_testing;
