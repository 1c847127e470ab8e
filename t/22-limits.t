#!/usr/bin/perl
#
# Several dify_status_limit in one scope (issue 12, items 1-3): two
# windows on one key with exact counts for each, a request refused by
# one limit costing nothing in the others (on one key: one script;
# across keys: the charges given back), Retry-After from the longest
# wait, key=all shared by many tokens across two nginx instances, key=
# from a header, an empty key skipping its limit, r/d at the caps, and
# the RateLimit fields parsed strictly as RFC 8941 Lists on every answer.
#
# Real nginx, real redis-server, the recording upstream.  Rates are per
# hour or per day: no refill during the test.  The fallback is "deny",
# so that a Redis failure is a 503, never a silent pass.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Digest::SHA qw(sha256_hex);
use DifyTest qw(uuid envelope);
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch patch_bytes
                 upstream_for wait_for limits);

DifyTest::require_module();

my $REDIS_TIMEOUT = (DifyTest->valgrind ? DifyTest::slow() : 1) * 2;

sub loc {
    my ($prefix, $limits) = @_;
    return qq{
        location $prefix/ {
            dify_status on;
            $limits
            proxy_pass http://upstream;
        }
    };
}

my $SERVER = q{
        add_header X-Dify-Status $dify_status always;
        add_header X-Dify-Limit $dify_status_limit always;
} . loc('/w2/v1', 'dify_status_limit name=short rate=3r/h;
            dify_status_limit name=daily rate=5r/d;')
  . loc('/both/v1', 'dify_status_limit name=a rate=1r/h burst=1;
            dify_status_limit name=b rate=1r/d burst=1;')
  . loc('/docs/v1', 'dify_status_limit rate=100r/h burst=10;
            dify_status_limit name=daily rate=20r/d cost=documents;')
  . loc('/all/v1', 'dify_status_limit name=global rate=6r/h key=all;
            dify_status_limit rate=4r/h;')
  . loc('/hdr/v1', 'dify_status_limit name=tenant rate=2r/h key=$http_x_tenant;')
  . loc('/rd/v1', 'dify_status_limit rate=1r/d burst=41666 cost=documents;')
  . loc('/rdmax/v1', 'dify_status_limit rate=1000000r/d burst=1000000;')
  . loc('/nolimit/v1', '');

my $HTTP = qq{
    dify_status_redis %%REDIS%% timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;
};

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(workers => 2, http => $HTTP . qq{
    server {
        listen 127.0.0.1:%%PORT%%;
$SERVER
    }
});

sub warm_up {
    my ($tt, %o) = @_;
    for (1 .. 100) {
        my $r = patch($tt, fresh_key('warm'), prefix => '/nolimit/v1', %o);
        last if $r->{status} == 200;
        Time::HiRes::sleep(0.05);
    }
    $tt->upstream_clear;
}
warm_up($t) for 1 .. 4;

sub statuses { join ' ', map { $_->{status} } @_ }

# the limits of an answer, parsed strictly; a failure to parse fails
sub lims {
    my ($res, $name) = @_;
    my $l = eval { limits($res) };
    ok !$@, ($name // 'RateLimit fields') . ': valid Structured Fields'
        or diag "$@: policy "
              . ($res->{headers}{'ratelimit-policy'} // '(none)')
              . ", ratelimit " . ($res->{headers}{ratelimit} // '(none)');
    return $l // {};
}

# what a state owes, in units of its own interval, from Redis
sub owed_units {
    my ($key) = @_;
    my $v = $t->redis('GET', $key) // return 0;
    my ($tat, $iv) = split /\./, $v;
    my ($s, $us) = @{ $t->redis('TIME') };
    my $d = $tat - ($s * 1e6 + $us);
    return 0 if $d <= 0;
    return int(($d + $iv - 1) / $iv);
}

# a change by hand applies within a second: wait it out
sub reset_global {
    $t->redis('DEL', hash_key(sha256_hex('all'), 'global'));
    Time::HiRes::sleep(1.1);
}

sub hash_key {
    my ($h, $name) = @_;
    return "dify:status:{$h}:tat" . ($name eq 'default' ? '' : ":$name");
}

# ---------------------------------------------------------------------------
subtest 'two windows on one key: exact counts for each' => sub {
    my $key = fresh_key('w2');
    my @r = map { patch($t, $key, prefix => '/w2/v1') } 1 .. 4;
    is statuses(@r), '200 200 200 429', 'short (3/h) passes 3, refuses the 4th';

    for my $i (0 .. 3) {
        my $l = lims($r[$i], "answer " . ($i + 1));
        is_deeply $l->{names}, [qw(short daily)],
            'both policies, in the order configured';
        is "$l->{short}{q} $l->{short}{w}", '3 3600', 'short: q=3 w=3600';
        is "$l->{daily}{q} $l->{daily}{w}", '5 86400', 'daily: q=5 w=86400';
    }
    is_deeply [ map { lims($_)->{short}{r} } @r ], [ 2, 1, 0, 0 ],
        'short counts down, then stays at 0';
    is_deeply [ map { lims($_)->{daily}{r} } @r ], [ 4, 3, 2, 2 ],
        'daily: the refused 4th cost nothing';
    is $r[3]{headers}{'retry-after'}, 1200, 'Retry-After: the short wait';
    is $r[3]{headers}{'x-dify-limit'}, 'short', '$dify_status_limit: short';
    ok !exists $r[0]{headers}{'x-dify-limit'}, '$dify_status_limit: unset when passed';
    is $r[3]{body}, envelope(429, 'too_many_requests',
        'Rate limit "short" exceeded for this API key; retry in 1200 seconds.'),
        'the message names the limit';
    is owed_units(hash_key(key_hash($key), 'daily')), 3,
        'Redis: daily owes the 3 that passed';
    is scalar(upstream_for($t, $key)), 3, 'upstream got 3';

    # raise short for this key (override NAME.burst): daily decides
    $t->redis('HSET', limit_key($key), 'short.rate', '100r/h',
              'short.burst', '100');
    my $ok = wait_for(3, sub {
        patch($t, $key, prefix => '/w2/v1')->{status} == 200 });
    ok $ok, 'raised short: passes (within a second of the HSET)';
    @r = map { patch($t, $key, prefix => '/w2/v1') } 1 .. 3;
    is statuses(@r), '200 429 429', 'daily (5/d) passes its 5th, then refuses';
    my $l = lims($r[1]);
    # short: 3 units spent at 3/h, kept across its change of rate, then
    # the 2 that passed since
    is "$l->{daily}{r} $l->{short}{r}", '0 95',
        'refused by daily: short was not charged (95 of 100 left)';
    is $l->{short}{q}, 100, 'short under its override: q=100';
    is owed_units(hash_key(key_hash($key), 'short')), 5,
        'Redis: short owes 5 units, the refused ones cost nothing';
    like $r[1]{headers}{'retry-after'}, qr/^1727[89]|17280$/,
        'Retry-After: daily\'s wait (17280 s, less the seconds passed)';
    is scalar(upstream_for($t, $key)), 5, 'upstream got 5 in all';
};

subtest 'Retry-After is the longest wait of the limits that refused' => sub {
    my $key = fresh_key('both');
    my @r = map { patch($t, $key, prefix => '/both/v1') } 1 .. 2;
    is statuses(@r), '200 429', 'one passes';
    is $r[1]{headers}{'retry-after'}, 86400, 'both refuse: the day';
    is $r[1]{headers}{'x-dify-limit'}, 'b', '$dify_status_limit: the longest wait';
    like $r[1]{json}{message}, qr/^Rate limit "b" exceeded/, 'named: b';
    my $l = lims($r[1]);
    is "$l->{a}{r} $l->{b}{r}", '0 0', 'both at 0';
};

subtest 'cost=documents on one of two limits' => sub {
    my $key = fresh_key('docs');
    my $r = patch($t, $key, prefix => '/docs/v1', ids => [ map { uuid($_) } 1 .. 8 ]);
    is $r->{status}, 200, '8 documents pass';
    my $l = lims($r);
    is "$l->{default}{r} $l->{daily}{r}", '9 12',
        'default (per request) charged 1, daily 8';
    $r = patch($t, $key, prefix => '/docs/v1', ids => [ map { uuid($_) } 1 .. 13 ]);
    is $r->{status}, 429, '13 more documents: daily refuses';
    $l = lims($r);
    is $l->{default}{r}, 9, 'default not charged by the refusal';
    $r = patch($t, $key, prefix => '/docs/v1', ids => [ map { uuid($_) } 1 .. 21 ]);
    is $r->{status}, 429, '21 documents: can never pass';
    ok !exists $r->{headers}{'retry-after'}, 'no Retry-After';
    is $r->{json}{message},
        'This request costs 21, more than this API key may ever spend at '
      . 'once under the limit "daily" (20); send smaller batches.',
        'the never-message names the limit';
};

# ---------------------------------------------------------------------------
# key=all: one bucket for every token, on two nginx instances

my $tb = DifyTest->new;
my $up_port = $t->upstream_port;
(my $server_b = $SERVER) =~ s{proxy_pass http://upstream;}
                              {proxy_pass http://127.0.0.1:$up_port;}g;
$tb->start_nginx(no_upstream => 1, upstream_block => 0, workers => 2,
    http => qq{
    dify_status_redis 127.0.0.1:${\ $t->redis_port} timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;
    server {
        listen 127.0.0.1:%%PORT%%;
$server_b
    }
});
warm_up($tb, port => $tb->port('PORT')) for 1 .. 4;
$t->upstream_clear;

my @PORTS = ($t->port('PORT'), $tb->port('PORT'));
my $ALL = sha256_hex('all');

subtest 'key=all: many tokens, two nginx, one bucket, exact' => sub {
    reset_global();
    my @keys = map { fresh_key('all') } 1 .. 12;
    my @r = map { patch($t, $keys[$_], prefix => '/all/v1',
                        port => $PORTS[ $_ % 2 ]) } 0 .. 11;
    is statuses(@r), join(' ', (200) x 6, (429) x 6),
        'alternating nodes, 12 tokens: exactly the first 6 pass';
    is_deeply [ map { lims($_)->{global}{r} } @r[0 .. 5] ], [ 5, 4, 3, 2, 1, 0 ],
        'both nodes count the one global bucket';
    # a refusal a node answers from its cache lists the limits it knows
    # the state of: a token it has never seen is not listed
    is_deeply [ map { lims($_)->{default}{r} // 4 } @r ], [ (3) x 6, (4) x 6 ],
        'per token: charged when passed, untouched when global refused';
    ok scalar(grep { !defined lims($_)->{default} } @r[6 .. 11]),
        'some refusals came from a cache (tokens unknown there: unlisted)';
    like $r[6]{json}{message}, qr/^Rate limit "global" exceeded; retry in/,
        'the message names the global limit, not the key';
    for my $i (6 .. 11) {
        is $t->redis('EXISTS', tat_key($keys[$i])), 0,
            "token " . ($i + 1) . ": refused by global, no per-token state"
            if $i == 6 || $i == 11;
    }
    is owed_units(hash_key($ALL, 'global')), 6, 'Redis: global owes 6';
    ok !grep({ $_ eq 'all' } split /\n/, $t->redis_cli('--scan')),
        'the key "all" is stored as its hash only';

    # concurrently on both nodes, 30 tokens: exactly 6
    reset_global();
    $t->upstream_clear;
    my @c;
    my @k2 = map { fresh_key('allc') } 1 .. 30;
    for my $i (0 .. 29) {
        my $c = $t->connect(port => $PORTS[ $i % 2 ]);
        push @c, $c;
    }
    $c[$_]->send(patch_bytes($k2[$_], prefix => '/all/v1')) for 0 .. 29;
    my @res = map { my $x = $_->read_response(timeout => DifyTest::timeout(10));
                    $_->close; $x } @c;
    is scalar(grep { $_->{status} == 200 } @res), 6,
        'concurrently, 30 tokens on two nodes: exactly 6 pass';
    is scalar(grep { $_->{status} == 429 } @res), 24, 'the rest get 429';
    is scalar($t->upstream_requests), 6, 'upstream got exactly 6';
};

subtest 'refused on one key, the other key gets its units back' => sub {
    # the per-token limit (4/h) refuses: the global charge is given back
    reset_global();
    my $key = fresh_key('refund');
    my @r = map { patch($t, $key, prefix => '/all/v1',
                        port => $PORTS[ $_ % 2 ]) } 0 .. 5;
    is statuses(@r), '200 200 200 200 429 429',
        'the token passes 4, then its own limit refuses';
    like $r[4]{json}{message}, qr/^Rate limit exceeded for this API key/,
        'refused by the per-token default';
    ok wait_for(3, sub { owed_units(hash_key($ALL, 'global')) == 4 }),
        'global owes the 4 that passed, not 6: the refused were given back'
        or diag 'global owes ' . owed_units(hash_key($ALL, 'global'));
    my $l = lims($r[5]);
    ok $l->{global}{r} >= 2, 'and the answer shows global not charged';

    # then 2 other tokens use up global exactly
    my @o = map { patch($t, fresh_key('refund2'), prefix => '/all/v1') } 1 .. 3;
    is statuses(@o), '200 200 429', 'global had exactly 2 left';
};

# ---------------------------------------------------------------------------
subtest 'key= from a header; an empty key skips the limit' => sub {
    my $ta = 'tenant-' . fresh_key('t');
    my @r = map { patch($t, fresh_key('h'), prefix => '/hdr/v1',
                        headers => [ 'X-Tenant' => $ta ]) } 1 .. 3;
    is statuses(@r), '200 200 429', 'one tenant, three tokens: 2 pass';
    is_deeply lims($r[0])->{names}, ['tenant'], 'the tenant policy';
    like $r[2]{json}{message}, qr/^Rate limit "tenant" exceeded; retry in 1800 seconds\.$/,
        'the tenant limit refused';
    is owed_units(hash_key(sha256_hex($ta), 'tenant')), 2,
        'state under the SHA-256 of the header value';
    my $scan = $t->redis_cli('--scan');
    unlike $scan, qr/\Q$ta\E/, 'the raw tenant is nowhere in Redis';

    my $tb_ = 'tenant-' . fresh_key('u');
    is patch($t, fresh_key('h'), prefix => '/hdr/v1',
             headers => [ 'X-Tenant' => $tb_ ])->{status}, 200,
        'another tenant: its own bucket';

    my $key = fresh_key('nohdr');
    my @n = map { patch($t, $key, prefix => '/hdr/v1') } 1 .. 5;
    is statuses(@n), '200 200 200 200 200', 'no header: the limit is skipped';
    ok !exists $n[0]{headers}{ratelimit}, 'and no RateLimit fields';
    is $n[0]{headers}{'x-dify-status'}, 'passed', '$dify_status passed';
    my @e = map { patch($t, $key, prefix => '/hdr/v1',
                        headers => [ 'X-Tenant' => '' ]) } 1 .. 3;
    is statuses(@e), '200 200 200', 'an empty header: skipped too';
};

# ---------------------------------------------------------------------------
subtest 'r/d at the caps' => sub {
    my $key = fresh_key('rd');
    my $r = patch($t, $key, prefix => '/rd/v1');
    is $r->{status}, 200, '1 r/d burst 41666: passes';
    my $l = lims($r);
    is "$l->{default}{q} $l->{default}{w}", '41666 3599942400',
        'q=41666, w = 41666 days in seconds';
    is "$l->{default}{r} $l->{default}{t}", '41665 86400', 'r, t = a day';
    my ($tat, $iv) = split /\./, $t->redis('GET', tat_key($key));
    is $iv, 86400e6, 'the state\'s interval: a day in us';

    # the whole bucket at once: 41665 more units (cost=documents, in
    # batches of 1000 ids is too big a body; override the cost instead
    # with burst: spend via HSET of a state 1 unit short of empty)
    my ($s, $us) = @{ $t->redis('TIME') };
    my $now = $s * 1e6 + $us;
    my $full = $now + 41665 * 86400e6;
    $t->redis('SET', tat_key($key), sprintf('%.0f.%011.0f', $full, 86400e6));
    ok $full < 2**53, 'a TAT 41665 days ahead is below 2^53';
    $r = patch($t, $key, prefix => '/rd/v1');
    is $r->{status}, 200, 'the last unit of the bucket passes';
    is lims($r)->{default}{r}, 0, 'r=0';
    $r = patch($t, $key, prefix => '/rd/v1');
    is $r->{status}, 429, 'then 429';
    ok $r->{headers}{'retry-after'} > 86399 && $r->{headers}{'retry-after'} <= 86400,
        'Retry-After: a day';

    $r = patch($t, fresh_key('rdmax'), prefix => '/rdmax/v1');
    $l = lims($r);
    is "$l->{default}{q} $l->{default}{w} $l->{default}{r} $l->{default}{t}",
        '1000000 86400 999999 1', '1e6 r/d: q, w, r, t';

    # an override in r/d
    my $k2 = fresh_key('rdo');
    $t->redis('HSET', limit_key($k2), 'rate', '2r/d');
    my @x = map { patch($t, $k2, prefix => '/rdmax/v1') } 1 .. 3;
    is statuses(@x), '200 200 429', 'override rate 2r/d: 2 pass';
    is lims($x[0])->{default}{w}, 86400, 'policy w=86400';
};

subtest 'configuration errors' => sub {
    my @bad = (
        [ 'dify_status_limit rate=1r/s; dify_status_limit rate=2r/s;',
          qr/duplicate limit name "default"/ ],
        [ 'dify_status_limit name=a.b rate=1r/s;', qr/invalid limit name/ ],
        [ 'dify_status_limit rate=1r/d burst=41667;',
          qr/takes longer than 3600000000 seconds to fill; at most 41666/ ],
        [ 'dify_status_limit off; dify_status_limit rate=1r/s;',
          qr/is duplicate/ ],
        [ join(' ', map { "dify_status_limit name=n$_ rate=1r/s;" } 1 .. 9),
          qr/more than 8/ ],
        [ 'dify_status_limit rate=1r/s key=;', qr/empty key/ ],
        [ 'dify_status_limit rate=1r/w;', qr/invalid rate/ ],
    );
    for my $b (@bad) {
        my ($rc, $out) = $t->nginx_t(http => $HTTP . qq{
            server {
                listen 127.0.0.1:%%PORT%%;
                location / { dify_status on; $b->[0] }
            }
        });
        isnt $rc, 0, "nginx -t refuses: $b->[0]";
        like $out, $b->[1], 'with the reason';
    }
    my ($rc, $out) = $t->nginx_t(http => $HTTP . q{
        server {
            listen 127.0.0.1:%%PORT%%;
            location / { dify_status on;
                dify_status_limit name=burst rate=20r/s burst=40;
                dify_status_limit name=daily rate=10000r/d cost=documents;
                dify_status_limit name=global rate=100r/s key=all;
                dify_status_limit name=ip rate=10r/s key=$binary_remote_addr;
            }
        }
    });
    is $rc, 0, 'the issue\'s examples are accepted' or diag $out;
};

$tb->done;
$t->done;
done_testing;
