#!/usr/bin/perl
#
# The rate limit (contract rows 8 and 8b) against a real redis-server, real
# nginx and the recording upstream: exact counts (one worker, four workers
# with concurrent clients, two nginx sharing one Redis), cost=documents,
# overrides and blocks set in Redis, the 429 answer and its headers,
# dify_status_limit_status, dify_status_limit_headers off, dry run,
# invalid requests costing no quota, and the shared-memory shadow (a
# limited key is refused without a script call; Retry-After is honest; the
# shadow never refuses what Redis would admit under another prefix or
# another location's default limit).
#
# Rates are per hour (or per minute with a 20 s interval) so that refill
# during a test is far below one unit.  Redis has timeout=2s (x10 in
# valgrind mode, where nginx is that much slower) and the fallback is
# "deny": a Redis failure shows up as a 503, never as a silent pass that
# would make a count look right.
#
# In valgrind mode nginx is a single process (worker_processes is
# ignored): the counts under concurrency still hold and are checked, only
# the check that several workers served the requests is skipped.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route envelope ids_body);
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch concurrent
                 upstream_for rl policy);

DifyTest::require_module();

my $LIMITED = qr/^Rate limit exceeded for this API key; retry in (\d+) seconds?\.$/;

sub loc {
    my ($prefix, $extra) = @_;
    return qq{
        location $prefix/ {
            dify_status on;
            $extra
            proxy_pass http://upstream;
        }
    };
}

my $SERVER = q{
        add_header X-Dify-Status $dify_status always;
        dify_status_max_body_size 4k;
} . loc('/v1', 'dify_status_limit rate=5 r/h;')
  . loc('/b/v1', 'dify_status_limit rate=10 r/h burst=3;')
  . loc('/m/v1', 'dify_status_limit rate=3 r/m;')
  . loc('/s/v1', 'dify_status_limit rate=1 r/s burst=2;')
  . loc('/docs/v1', 'dify_status_limit rate=10 r/h cost=documents;')
  . loc('/s503/v1', 'dify_status_limit rate=2 r/h;
            dify_status_limit_status 503;')
  . loc('/nohdr/v1', 'dify_status_limit rate=2 r/h;
            dify_status_limit_headers off;')
  . loc('/dry/v1', 'dify_status_limit rate=2 r/h;
            dify_status_dry_run on;')
  . loc('/nolimit/v1', '')
  . loc('/pa/v1', 'dify_status_redis_prefix a:; dify_status_limit rate=2 r/h;')
  . loc('/pb/v1', 'dify_status_redis_prefix b:; dify_status_limit rate=2 r/h;')
  . loc('/x/v1', 'dify_status_limit rate=1 r/h burst=1;')
  . loc('/y/v1', 'dify_status_limit rate=360 r/h;');

my $REDIS_TIMEOUT = (DifyTest->valgrind ? DifyTest::slow() : 1) * 2;

my $HTTP_COMMON = qq{
    dify_status_redis %%REDIS%% timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;
    log_format dl '\$pid \$status \$dify_status \$dify_status_key';
};

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(http => $HTTP_COMMON . qq{
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/limit.log dl;
$SERVER
    }
});

# waits until every worker has its Redis connection (a 503 otherwise)
sub warm_up {
    my ($tt, $prefix, %o) = @_;
    for (1 .. 100) {
        my $r = patch($tt, fresh_key('warm'), prefix => $prefix, %o);
        last if $r->{status} == 200;
        Time::HiRes::sleep(0.05);
    }
    $tt->upstream_clear;
}
warm_up($t, '/nolimit/v1');
warm_up($t, '/v1');

sub statuses { join ' ', map { $_->{status} } @_ }

# ---------------------------------------------------------------------------
subtest 'rate=5 r/h: exactly 5 of 8 sequential requests pass' => sub {
    my $key = fresh_key('seq');
    $t->upstream_clear;
    my @r = map { patch($t, $key) } 1 .. 8;

    is statuses(@r), '200 200 200 200 200 429 429 429', 'statuses in order';
    is scalar(upstream_for($t, $key)), 5, 'upstream got exactly 5';
    is_deeply [ map { rl($_)->{r} // 'none' } @r ],
        [ 4, 3, 2, 1, 0, 0, 0, 0 ], 'RateLimit r counts down to 0';
    is_deeply [ map { $_->{headers}{'x-dify-status'} // '' } @r ],
        [ ('passed') x 5, ('limited') x 3 ], '$dify_status';

    # interval 720 s: the next unit always comes back within 720 s
    for my $i (0 .. $#r) {
        is $r[$i]{headers}{'ratelimit-policy'}, '"default";q=5;w=3600',
            "RateLimit-Policy on answer " . ($i + 1);
        is rl($r[$i])->{t}, 720, "RateLimit t=720 on answer " . ($i + 1);
    }

    my $l = $r[5];
    is $l->{headers}{'retry-after'}, 720, 'Retry-After: 720';
    my ($n) = ($l->{json}{message} // '') =~ $LIMITED;
    is $n, $l->{headers}{'retry-after'}, 'message names the Retry-After';
    is $l->{body}, envelope(429, 'too_many_requests',
        'Rate limit exceeded for this API key; retry in 720 seconds.'),
        '429 body byte for byte';
    is $l->{headers}{'content-type'}, 'application/json', 'JSON';
    is $l->{headers}{'content-length'}, length $l->{body}, 'Content-Length';
    ok !exists $r[0]{headers}{'retry-after'}, 'no Retry-After when passed';

    # the state in Redis: the bucket is empty, so it is full again in 1 h
    my $pttl = $t->redis('PTTL', tat_key($key));
    ok $pttl > 3590_000 && $pttl <= 3600_000,
        "state key expires when the bucket is full again (PTTL $pttl)";
    my ($sec, $usec) = @{ $t->redis('TIME') };
    # "TAT.IIIIIIIIIII", the interval the TAT was written under after
    # the point (which an older node's tonumber() reads as a fraction)
    my ($tat, $iv) = split /\./, $t->redis('GET', tat_key($key));
    is $iv, '00720000000', 'state records its interval (720 s, 11 digits)';
    my $d = $tat - ($sec * 1e6 + $usec);
    ok $d > 3590e6 && $d <= 3600e6, "TAT is now + 5 * 720 s (d = $d us)";
};

subtest 'the 429 answer, checked by the harness' => sub {
    my $key = fresh_key('rej');
    patch($t, $key) for 1 .. 5;
    $t->upstream_clear;
    my $r = patch($t, $key);
    $t->reject_ok($r, 429, 'too_many_requests',
        'Rate limit exceeded for this API key; retry in 720 seconds.',
        '429 too_many_requests');
};

subtest 'burst=3 with rate=10 r/h' => sub {
    my $key = fresh_key('burst');
    $t->upstream_clear;
    my @r = map { patch($t, $key, prefix => '/b/v1') } 1 .. 6;
    is statuses(@r), '200 200 200 429 429 429', 'exactly 3 pass';
    is scalar(upstream_for($t, $key)), 3, 'upstream got exactly 3';
    is $r[0]{headers}{'ratelimit-policy'}, '"default";q=3;w=1080',
        'policy q=3, w = 3 * 360 s';
    is rl($r[2])->{r}, 0, 'r=0 after the third';
    is $r[3]{headers}{'retry-after'}, 360, 'Retry-After: one interval';
};

subtest 'rate=3 r/m (interval 20 s)' => sub {
    my $key = fresh_key('perminute');
    $t->upstream_clear;
    my @r = map { patch($t, $key, prefix => '/m/v1') } 1 .. 5;
    is statuses(@r), '200 200 200 429 429', 'exactly 3 pass';
    is scalar(upstream_for($t, $key)), 3, 'upstream got exactly 3';
    is $r[0]{headers}{'ratelimit-policy'}, '"default";q=3;w=60', 'policy';
    is $r[3]{headers}{'retry-after'}, 20, 'Retry-After: 20';
};

subtest 'keys are limited independently' => sub {
    my ($k1, $k2) = (fresh_key('ind'), fresh_key('ind'));
    patch($t, $k1, prefix => '/s503/v1') for 1 .. 2;
    my $r = patch($t, $k1, prefix => '/s503/v1');
    is $r->{status}, 503, 'first key limited';
    $r = patch($t, $k2, prefix => '/s503/v1');
    is $r->{status}, 200, 'second key still passes';
    is rl($r)->{r}, 1, 'with its own full bucket';
};

sub script_calls {
    my ($tt) = @_;
    my $s = $tt->redis('INFO', 'commandstats');
    my $n = 0;
    $n += $1 while $s =~ /^cmdstat_eval(?:sha)?:calls=(\d+)/mg;
    return $n;
}

subtest 'a limited key is refused from shared memory, not Redis' => sub {
    my $key = fresh_key('shadow');
    patch($t, $key) for 1 .. 5;
    my $before = script_calls($t);
    my @r = map { patch($t, $key) } 1 .. 10;
    is statuses(@r), join(' ', (429) x 10), 'limited';
    is script_calls($t) - $before, 0, 'without a script call to Redis';
    is $r[9]{headers}{'retry-after'}, 720, 'with the same Retry-After';
    is rl($r[9])->{r}, 0, 'and RateLimit';

    # a raised override written by hand: in force within a second (the
    # cached verdict's life; t/23 checks it on every node and worker)
    $t->redis('HSET', limit_key($key), 'burst', '50');
    Time::HiRes::sleep(1.1);
    is patch($t, $key)->{status}, 200,
        'raised override: in force a second later';
};

subtest 'Retry-After is honest (rate=1 r/s burst=2)' => sub {
    my $key = fresh_key('honest');
    my @r = map { patch($t, $key, prefix => '/s/v1') } 1 .. 3;
    is statuses(@r), '200 200 429', '2 pass, the third is limited';
    my $ra = $r[2]{headers}{'retry-after'} // 0;
    is $ra, 1, 'Retry-After: 1';
    $t->redis('HSET', limit_key($key), 'burst', '10');
    Time::HiRes::sleep($ra + 0.1);
    my $r = patch($t, $key, prefix => '/s/v1');
    is $r->{status}, 200, 'passes once Retry-After has elapsed';
    is $r->{headers}{'ratelimit-policy'}, '"default";q=10;w=10',
        'and the raised override is in force';
};

subtest 'the shared-memory shadow never refuses what Redis would admit' => sub {
    # another prefix is another quota (another Redis key)
    my $key = fresh_key('prefix');
    my @a = map { patch($t, $key, prefix => '/pa/v1') } 1 .. 3;
    is statuses(@a), '200 200 429', 'prefix a: limited';
    my $r = patch($t, $key, prefix => '/pb/v1');
    is $r->{status}, 200, 'prefix b: its own quota, passes';
    is $r->{headers}{'x-dify-status'}, 'passed', 'decided by Redis';
    is $t->redis('EXISTS', 'b:{' . key_hash($key) . '}:tat'), 1,
        'state under prefix b:';

    # the same state under two default limits: 360 r/h (interval 10 s,
    # burst 360) and 1 r/h (burst 1).  One request at /y owes 10 s; /x
    # refuses (10 s + 3600 s > 3600 s); /y still admits (20 s <= 3600 s)
    my $k2 = fresh_key('locs');
    is patch($t, $k2, prefix => '/y/v1')->{status}, 200, '/y admits';
    my $x = patch($t, $k2, prefix => '/x/v1');
    is $x->{status}, 429, '/x (1 r/h) refuses';
    $r = patch($t, $k2, prefix => '/y/v1');
    is $r->{status}, 200, '/y (360 r/h) admits again, as Redis would';
    is $r->{headers}{'ratelimit-policy'}, '"default";q=360;w=3600',
        '/y answers with its own policy';
};

# ---------------------------------------------------------------------------
subtest 'cost=documents' => sub {
    my $key = fresh_key('docs');
    my $p = '/docs/v1';
    $t->upstream_clear;

    my $r = patch($t, $key, prefix => $p, ids => [ map { uuid(10 + $_) } 1 .. 3 ]);
    is $r->{status}, 200, '3 ids pass';
    is rl($r)->{r}, 7, '3 ids cost 3 (r=7)';

    $r = patch($t, $key, prefix => $p, ids => []);
    is $r->{status}, 200, '0 ids pass';
    is rl($r)->{r}, 6, '0 ids cost 1 (r=6)';

    $r = patch($t, $key, prefix => $p, ids => [ uuid(20) ]);
    is rl($r)->{r}, 5, '1 id costs 1 (r=5)';

    # over the burst: can never pass, whatever the state
    is scalar(upstream_for($t, $key)), 3, 'upstream got the 3 admitted';
    $t->upstream_clear;
    $r = patch($t, $key, prefix => $p, ids => [ map { uuid(30 + $_) } 1 .. 11 ]);
    is $r->{status}, 429, '11 ids with burst 10: 429';
    is $r->{json}{code}, 'too_many_requests', 'code';
    like $r->{body},
        qr/^\{"status": 429, "code": "too_many_requests", "message": "[^"]+"\}$/,
        'envelope';
    my $m = $r->{json}{message} // '';
    like $m, qr/\b11\b/, 'message names the cost';
    like $m, qr/\b10\b/, 'message names the burst';
    like $m, qr/never|ever spend/i, 'message says it can never pass';
    unlike $m, qr/retry in/i, 'message does not promise a retry';
    ok !exists $r->{headers}{'retry-after'}, 'no Retry-After';
    $t->nothing_upstream('over-burst batch');

    $r = patch($t, $key, prefix => $p, ids => [ uuid(21) ]);
    is rl($r)->{r}, 4, 'the refused batch cost nothing (r=4 after 1 more)';

    # 5 more would need 11 > 10: limited, retry after one interval (360 s)
    $r = patch($t, $key, prefix => $p, ids => [ map { uuid(40 + $_) } 1 .. 5 ]);
    is $r->{status}, 429, '5 ids with 4 left: 429';
    is $r->{headers}{'retry-after'}, 360, 'Retry-After: one interval';
    like $r->{json}{message} // '', qr/retry in 360 seconds/, 'message';

    $r = patch($t, $key, prefix => $p, ids => [ map { uuid(40 + $_) } 1 .. 4 ]);
    is $r->{status}, 200, '4 ids with 4 left pass';
    is rl($r)->{r}, 0, 'r=0';

    $r = patch($t, $key, prefix => $p, ids => []);
    is $r->{status}, 429, 'then even a 0-id request is limited';

    is scalar(upstream_for($t, $key)), 2, 'upstream got the 2 admitted since';

    # a fresh key, over the burst at once: 429 from a full bucket
    my $k2 = fresh_key('docs');
    $t->upstream_clear;
    $r = patch($t, $k2, prefix => $p, ids => [ map { uuid(60 + $_) } 1 .. 11 ]);
    is $r->{status}, 429, 'fresh key, 11 ids: 429 at once';
    ok !exists $r->{headers}{'retry-after'}, 'no Retry-After';
    $t->nothing_upstream('over-burst batch of a fresh key');
    $r = patch($t, $k2, prefix => $p, ids => [ map { uuid(60 + $_) } 1 .. 10 ]);
    is $r->{status}, 200, 'fresh key, 10 ids pass';
    is rl($r)->{r}, 0, 'and empty the bucket';
};

# ---------------------------------------------------------------------------
subtest 'overrides in Redis take effect without reload' => sub {
    # lowered: 1 used of 5 (720 s owed); then rate 1 r/h burst 2: the
    # unit spent is kept (3600 s owed at the new rate, not 720 s),
    # 3600 + 3600 <= 7200 passes once more, 7200 + 3600 > 7200 does
    # not, and the wait is 3600 s
    my $key = fresh_key('lower');
    my $r = patch($t, $key);
    is rl($r)->{r}, 4, 'default limit first';
    $t->redis('HSET', limit_key($key), 'rate', '1r/h', 'burst', '2');
    $t->upstream_clear;
    $r = patch($t, $key);
    is $r->{status}, 200, 'passes once under the lowered limit';
    is $r->{headers}{'ratelimit-policy'}, '"default";q=2;w=7200',
        'policy of the override';
    is rl($r)->{r}, 0, 'r=0';
    $r = patch($t, $key);
    is $r->{status}, 429, 'then limited';
    is $r->{headers}{'retry-after'}, 3600,
        'Retry-After from the override, the spent unit kept';
    is scalar(upstream_for($t, $key)), 1, 'upstream got the one admitted';

    # raised: 1 used of 5, then burst 20: 19 more pass, not 4
    my $k2 = fresh_key('raise');
    patch($t, $k2);
    $t->redis('HSET', limit_key($k2), 'burst', '20');
    $t->upstream_clear;
    my @r = map { patch($t, $k2) } 1 .. 21;
    is scalar(grep { $_->{status} == 200 } @r), 19, '19 more pass';
    is $r[-1]{status}, 429, 'the 21st is limited';
    is scalar(upstream_for($t, $k2)), 19, 'upstream got exactly 19';
    is $r[0]{headers}{'ratelimit-policy'}, '"default";q=20;w=14400',
        'policy q=20';

    # the "N /m" form (no "r"): 2 per minute, interval 30 s
    my $k3 = fresh_key('form');
    $t->redis('HSET', limit_key($k3), 'rate', '2 /m', 'burst', '2');
    my @f = map { patch($t, $k3) } 1 .. 3;
    is statuses(@f), '200 200 429', 'rate "2 /m" burst 2: 2 pass';
    is $f[0]{headers}{'ratelimit-policy'}, '"default";q=2;w=60',
        'policy q=2, w=60';
    is $f[2]{headers}{'retry-after'}, 30, 'Retry-After: 30 s';

    # invalid fields fall back to the default
    my $k4 = fresh_key('badover');
    $t->redis('HSET', limit_key($k4), 'rate', 'lots', 'burst', '-3');
    $r = patch($t, $k4);
    is $r->{status}, 200, 'invalid override: passes';
    is $r->{headers}{'ratelimit-policy'}, '"default";q=5;w=3600',
        'invalid override fields: the default limit';
};

subtest 'blocked key: 403 at once, unblocked: access restored' => sub {
    my $key = fresh_key('blocked');
    my $r = patch($t, $key);
    is $r->{status}, 200, 'passes before the block';

    $t->redis('HSET', limit_key($key), 'blocked', '1');
    $t->upstream_clear;
    $r = patch($t, $key);
    $t->reject_ok($r, 403, 'forbidden', 'Insufficient permissions.',
        'blocked: the documented 403');
    is $r->{body},
        '{"status": 403, "code": "forbidden", "message": "Insufficient permissions."}',
        '403 body byte for byte (literal)';
    ok !exists $r->{headers}{'retry-after'}, 'no Retry-After on 403';
    is $r->{headers}{'x-dify-status'}, 'blocked', '$dify_status blocked';

    # still blocked, and a block costs nothing
    $r = patch($t, $key) for 1 .. 3;
    is $r->{status}, 403, 'still 403';

    $t->redis('HDEL', limit_key($key), 'blocked');
    $r = patch($t, $key);
    is $r->{status}, 200, 'unblocked: passes again';
    is rl($r)->{r}, 3, 'the blocked requests cost no quota (r=3)';

    # "blocked" other than "1" does not block
    $t->redis('HSET', limit_key($key), 'blocked', '0');
    $r = patch($t, $key);
    is $r->{status}, 200, 'blocked=0 does not block';

    # a block on a fresh key, with a limit override too
    my $k2 = fresh_key('blocked');
    $t->redis('HSET', limit_key($k2), 'blocked', '1', 'burst', '50');
    $t->upstream_clear;
    $r = patch($t, $k2);
    is $r->{status}, 403, 'fresh blocked key: 403';
    $t->nothing_upstream('blocked');
};

# ---------------------------------------------------------------------------
subtest 'dify_status_limit_status 503' => sub {
    my $key = fresh_key('s503');
    my @r = map { patch($t, $key, prefix => '/s503/v1') } 1 .. 3;
    is statuses(@r), '200 200 503', 'the limited answer is 503';
    is $r[2]{body}, envelope(503, 'too_many_requests',
        'Rate limit exceeded for this API key; retry in 1800 seconds.'),
        'body: status 503, code too_many_requests';
    is $r[2]{headers}{'retry-after'}, 1800, 'Retry-After';
    is $r[2]{headers}{'ratelimit-policy'}, '"default";q=2;w=3600',
        'RateLimit-Policy';
    is rl($r[2])->{r}, 0, 'RateLimit r=0';
};

subtest 'dify_status_limit_headers off' => sub {
    my $key = fresh_key('nohdr');
    my @r = map { patch($t, $key, prefix => '/nohdr/v1') } 1 .. 3;
    is statuses(@r), '200 200 429', 'still limited';
    for my $i (0 .. 2) {
        ok !exists $r[$i]{headers}{ratelimit}, "no RateLimit on " . ($i + 1);
        ok !exists $r[$i]{headers}{'ratelimit-policy'},
            "no RateLimit-Policy on " . ($i + 1);
    }
    is $r[2]{headers}{'retry-after'}, 1800, 'Retry-After stays (row 8)';
    like $r[2]{json}{message} // '', $LIMITED, 'message';
};

subtest 'dry run: never rejects, headers set, logged' => sub {
    my $key = fresh_key('dry');
    my $h12 = substr key_hash($key), 0, 12;
    my $mark = $t->log_mark;
    $t->upstream_clear;

    my @r = map { patch($t, $key, prefix => '/dry/v1') } 1 .. 5;
    is statuses(@r), '200 200 200 200 200', 'all pass';
    is scalar(upstream_for($t, $key)), 5, 'upstream got all 5';
    is_deeply [ map { $_->{headers}{'x-dify-status'} // '' } @r ],
        [ 'passed', 'passed', ('dry_run_limited') x 3 ],
        '$dify_status: dry_run_limited for the 3 over the limit';
    is_deeply [ map { rl($_)->{r} // 'none' } @r ], [ 1, 0, 0, 0, 0 ],
        'RateLimit headers as if enforced';
    is $r[4]{headers}{'ratelimit-policy'}, '"default";q=2;w=3600', 'policy';
    ok !exists $r[4]{headers}{'retry-after'}, 'no Retry-After on a pass';

    my @lines = grep { /dry run/ && /\Q$h12\E/ }
        split /\n/, $t->error_log_since($mark);
    is scalar(@lines), 3, 'one log line per request that would be limited'
        or diag explain \@lines;
    like $lines[0] // '', qr/would be limited/, 'says "would be limited"';

    # a blocked key in dry run passes too, and is logged
    $t->redis('HSET', limit_key($key), 'blocked', '1');
    $mark = $t->log_mark;
    $t->upstream_clear;
    my $k2 = fresh_key('dry');
    $t->redis('HSET', limit_key($k2), 'blocked', '1');
    my $r = patch($t, $k2, prefix => '/dry/v1');
    is $r->{status}, 200, 'dry run: a blocked key passes';
    is scalar(upstream_for($t, $k2)), 1, 'and reaches the upstream';
    my $h = substr key_hash($k2), 0, 12;
    like $t->error_log_since($mark), qr/dry run.*\Q$h\E.*would be blocked/,
        'logged as "would be blocked"';
};

# ---------------------------------------------------------------------------
subtest 'invalid requests cost no quota' => sub {
    my $key = fresh_key('invalid');
    my $auth = "Bearer $key";
    my $path = route(uuid(1), 'enable');
    my $ct = [ 'Content-Type' => 'application/json' ];
    my @bad = (
        [ 404, route('not-a-uuid', 'enable'), $ct, ids_body(uuid(2)) ],
        [ 400, route(uuid(1), 'delete'), $ct, ids_body(uuid(2)) ],
        [ 415, $path, [ 'Content-Type' => 'text/plain' ], ids_body(uuid(2)) ],
        [ 415, $path, [ @$ct, 'Content-Encoding' => 'gzip' ], ids_body(uuid(2)) ],
        [ 413, $path, $ct, ids_body(map { uuid($_) } 1 .. 200) ],
        [ 400, $path, $ct, '{"document_ids": [' ],
        [ 400, $path, $ct, '[]' ],
        [ 400, $path, $ct, '{"document_ids": ["' . uuid(2) . '"], "document_ids": 5}' ],
        [ 400, $path, $ct, '{}' ],
        [ 400, $path, $ct, '{"document_ids": ["nope"]}' ],
        [ 400, $path, $ct, '{"document_ids": "x"}' ],
    );
    $t->upstream_clear;
    for my $b (@bad) {
        my ($status, $p, $h, $body) = @$b;
        for (1 .. 3) {
            my $r = $t->http('PATCH', $p, headers => [ Authorization => $auth, @$h ],
                             body => $body);
            is $r->{status}, $status,
                "$status for " . substr("$p $body", 0, 90)
                or diag $r->{body};
            ok !exists $r->{headers}{ratelimit}, 'no RateLimit on it';
        }
    }
    $t->nothing_upstream('invalid requests');
    is $t->redis('EXISTS', tat_key($key)), 0, 'no state in Redis';

    my @r = map { patch($t, $key) } 1 .. 6;
    is statuses(@r), '200 200 200 200 200 429', 'the full quota is left';
    is rl($r[0])->{r}, 4, 'r=4 after the first valid request';

    # limited now: an invalid request still gets its own answer
    my $r = $t->http('PATCH', route(uuid(1), 'delete'),
        headers => [ Authorization => $auth, @$ct ], body => ids_body(uuid(2)));
    is $r->{status}, 400, 'limited key, invalid action: 400, not 429';
    $r = $t->http('PATCH', $path, headers => [ Authorization => $auth, @$ct ],
                  body => '{"document_ids": ["nope"]}');
    is $r->{status}, 400, 'limited key, invalid id: 400, not 429';
};

subtest 'no limit configured: no Redis state, no headers' => sub {
    my $key = fresh_key('nolimit');
    my @r = map { patch($t, $key, prefix => '/nolimit/v1') } 1 .. 8;
    is statuses(@r), join(' ', (200) x 8), 'all pass';
    ok !exists $r[0]{headers}{ratelimit}, 'no RateLimit';
    is $t->redis('EXISTS', tat_key($key)), 0, 'nothing in Redis';
};

# ---------------------------------------------------------------------------
# four workers, concurrent connections

my $t4 = DifyTest->new;
$t4->start_redis;
$t4->start_nginx(workers => 4, http => $HTTP_COMMON . qq{
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/limit.log dl;
$SERVER
    }
});
warm_up($t4, '/nolimit/v1') for 1 .. 8;
warm_up($t4, '/v1') for 1 .. 8;

subtest 'worker_processes 4: exact counts under concurrency' => sub {
    my %pids;
    for my $round (1 .. 4) {
        my $key = fresh_key('w4');
        $t4->upstream_clear;
        my $n = 40;
        my @r = concurrent($t4, $n, $key, prefix => '/b/v1');
        my $ok = grep { $_->{status} == 200 } @r;
        my $lim = grep { $_->{status} == 429 } @r;
        is $ok, 3, "round $round: exactly 3 of $n pass (burst 3)";
        is $lim, $n - 3, "round $round: the others get 429";
        is scalar(upstream_for($t4, $key)), 3,
            "round $round: upstream got exactly 3";
        is_deeply [ sort { $a <=> $b } map { rl($_)->{r} }
                    grep { $_->{status} == 200 } @r ], [ 0, 1, 2 ],
            "round $round: the admitted saw r=2, 1, 0";
    }

    # a bigger bucket, so that many requests go to Redis, not the shadow
    my $key = fresh_key('w4big');
    $t4->redis('HSET', limit_key($key), 'burst', '25');
    $t4->upstream_clear;
    my @r = concurrent($t4, 60, $key);
    is scalar(grep { $_->{status} == 200 } @r), 25, 'burst 25: 25 of 60 pass';
    is scalar(upstream_for($t4, $key)), 25, 'upstream got exactly 25';

    # cost=documents concurrently: 3 ids each, 10 units: 3 pass
    my $k3 = fresh_key('w4docs');
    $t4->upstream_clear;
    @r = concurrent($t4, 30, $k3, prefix => '/docs/v1',
                    ids => [ map { uuid(70 + $_) } 1 .. 3 ]);
    is scalar(grep { $_->{status} == 200 } @r), 3,
        'cost 3, burst 10: exactly 3 of 30 pass';
    is scalar(upstream_for($t4, $k3)), 3, 'upstream got exactly 3';

    for (split /\n/, DifyTest::_slurp($t4->dir . '/limit.log')) {
        my ($pid, $status, $outcome) = split / /;
        $pids{$pid}++ if $outcome =~ /^(?:passed|limited)$/;
    }
    SKIP: {
        skip 'valgrind mode: nginx is a single process, there are no '
            . 'several workers to serve the requests', 1 if $t4->valgrind;
        cmp_ok scalar(keys %pids), '>=', 2,
            'the requests were served by several workers'
            or diag explain \%pids;
    }
};

# ---------------------------------------------------------------------------
# two nginx instances sharing one Redis (and one upstream)

my $tb = DifyTest->new;
my $redis_port = $t4->redis_port;
my $up_port = $t4->upstream_port;
(my $server_b = $SERVER) =~ s{proxy_pass http://upstream;}
                              {proxy_pass http://127.0.0.1:$up_port;}g;
$tb->start_nginx(no_upstream => 1, upstream_block => 0, workers => 2,
    http => qq{
    dify_status_redis 127.0.0.1:$redis_port timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;
    server {
        listen 127.0.0.1:%%PORT%%;
$server_b
    }
});
warm_up($tb, '/nolimit/v1', port => $tb->port('PORT')) for 1 .. 4;
$t4->upstream_clear;

subtest 'two nginx, one Redis: one shared limit' => sub {
    my @ports = ($t4->port('PORT'), $tb->port('PORT'));

    my $key = fresh_key('fleet');
    my @r = map { patch($t4, $key, port => $ports[ $_ % 2 ]) } 0 .. 14;
    is statuses(@r), join(' ', (200) x 5, (429) x 10),
        'alternating: exactly the first 5 of 15 pass';
    is_deeply [ map { rl($_)->{r} // 'none' } @r[0 .. 4] ],
        [ 4, 3, 2, 1, 0 ], 'both count the same bucket';
    is scalar(upstream_for($t4, $key)), 5, 'upstream got exactly 5';

    # limited on A only so far as B knows: B must ask Redis and refuse
    my $k2 = fresh_key('fleet');
    patch($t4, $k2, port => $ports[0]) for 1 .. 5;
    my $r = patch($t4, $k2, port => $ports[1]);
    is $r->{status}, 429, 'used up on A, limited on B';

    # concurrently on both
    my $k3 = fresh_key('fleet');
    $t4->redis('HSET', limit_key($k3), 'burst', '12');
    $t4->upstream_clear;
    @r = concurrent($t4, 50, $k3, ports => \@ports);
    is scalar(grep { $_->{status} == 200 } @r), 12,
        'concurrently on both: exactly 12 of 50 pass';
    is scalar(grep { $_->{status} == 429 } @r), 38, 'the rest get 429';
    is scalar(upstream_for($t4, $k3)), 12, 'upstream got exactly 12';
};

$tb->done;
$t4->done;
$t->done;
done_testing;
