#!/usr/bin/perl
#
# The decisions of one event-loop pass are one script call (issue 11):
# requests of many keys that reach a worker at the same moment are sent
# to Redis as one EVALSHA, decided in order, and answered each as it
# would have been alone.
#
#   - many keys at once, half of them with an override and half without
#     ("c" and "d" groups in the same calls): fewer script calls than
#     decisions, and exact counts for every key;
#   - the same key several times in one call: each sees the earlier
#     charges (exactly burst pass);
#   - the hint is never the verdict: an override written by hand on a key
#     last seen without one (a block, a lower burst), and one removed
#     from a key last seen with one, are in force for the very next
#     requests, batched with others;
#   - an override of the wrong Redis type (not a hash) fails its own
#     key's decision (the fallback), never the other keys of its call;
#   - clients that go away while their group waits in the batch or in
#     flight: the others are answered, nothing leaks (ASan, valgrind);
#   - several workers: still exact.
#
# Real nginx, real redis-server, the recording upstream.  Rates are per
# hour: no refill during the test; the fallback is "deny", so a failure
# is a 503, never a silent pass.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use DifyTest;
use DifyLimit qw(fresh_key limit_key tat_key patch patch_bytes
                 upstream_for wait_for);

DifyTest::require_module();

my $VG = DifyTest->valgrind;
my $TIMEOUT = ($VG ? DifyTest::slow() : 1) * 2;
my $N = $VG ? 8 : 20;           # keys of each kind

my $HTTP = qq{
    dify_status_redis %%REDIS%% timeout=${TIMEOUT}s;
    dify_status_redis_fallback deny;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=10 r/h;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
};

sub metric {
    my ($t, $name) = @_;
    my $r = $t->http('GET', '/metrics');
    my $n = 0;
    for (split /\n/, $r->{body} // '') {
        $n += $1 if /^\Q$name\E(?:\{[^}]*\})?\s+(\d+)$/;
    }
    return $n;
}

sub script_calls {
    my ($t) = @_;
    my $s = $t->redis('INFO', 'commandstats') // '';
    my $n = 0;
    $n += $1 while $s =~ /^cmdstat_eval(?:sha)?:calls=(\d+)/mg;
    return $n;
}

# every request's bytes but the last, sent on a connection of its own
# (to nginx $t): the connections and the bytes left
sub pending {
    my ($t, @keys) = @_;
    my (@c, @last);
    for my $k (@keys) {
        my $bytes = patch_bytes($k);
        my $c = $t->connect;
        $c->send(substr($bytes, 0, -1));
        push @c, $c;
        push @last, substr($bytes, -1);
    }
    return (\@c, \@last);
}

sub answer {
    my ($c) = @_;
    my $res = eval { $c->read_response(timeout => DifyTest::timeout(10)) };
    $c->close;
    return $res // { status => 0, headers => {} };
}

# then the last bytes of all of them in one burst: they reach the worker
# together
sub burst {
    my ($t, @keys) = @_;
    my ($c, $last) = pending($t, @keys);
    sleep 0.05;
    $c->[$_]->send($last->[$_]) for 0 .. $#$c;
    return map { answer($_) } @$c;
}

sub tally {
    my %n;
    $n{$_}++ for @_;
    return join ', ', map { "$_ x$n{$_}" } sort keys %n;
}

sub owes_units {
    my ($t, $key, $units, $name) = @_;
    my $s = $t->redis('GET', tat_key($key)) // '';
    my ($tat) = $s =~ /^(\d+)\./;
    my ($sec, $usec) = @{ $t->redis('TIME') };
    my $now = $sec * 1e6 + $usec;
    # 10 r/h: one unit is 360 s; what is owed, in whole units (rounded up)
    my $got = defined $tat ? int(($tat - $now) / 360e6 + 0.999) : 0;
    is $got, $units, $name;
}

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(workers => 1, http => $HTTP);

ok wait_for(DifyTest::timeout(5), sub {
    my $r = patch($t, fresh_key('up'));
    $r->{status} == 200 && ($r->{headers}{'x-dify-status'} // '') eq 'passed';
}), 'the worker is on Redis';
$t->upstream_clear;

my @plain = map { fresh_key('plain') } 1 .. $N;
my @over = map { fresh_key('over') } 1 .. $N;
$t->redis('HSET', limit_key($_), 'burst', '2') for @over;

subtest 'many keys at once, with and without an override' => sub {
    my $calls0 = script_calls($t);
    my $dec0 = metric($t, 'dify_status_redis_decisions_total');

    # each key three times, all at once: plain keys (burst 10) all pass,
    # overridden ones (burst 2) twice each
    my @keys = ((@plain, @over) x 3);
    my @r = burst($t, @keys);

    my (%pass, %lim);
    for my $i (0 .. $#keys) {
        $pass{ $keys[$i] }++ if $r[$i]{status} == 200;
        $lim{ $keys[$i] }++ if $r[$i]{status} == 429;
    }
    is scalar(grep { ($pass{$_} // 0) == 3 } @plain), $N,
        'every key without an override: 3 of 3 pass';
    is scalar(grep { ($pass{$_} // 0) == 2 && ($lim{$_} // 0) == 1 } @over),
        $N, 'every key with burst 2: exactly 2 pass, 1 is limited';
    is tally(map { $_->{status} } @r), "200 x" . (5 * $N) . ", 429 x$N",
        'nothing else (no 503)';
    is scalar($t->upstream_requests), 5 * $N, 'upstream got exactly those';

    my $calls = script_calls($t) - $calls0;
    my $dec = metric($t, 'dify_status_redis_decisions_total') - $dec0;
    is $dec, 6 * $N, 'every request decided by Redis';
    cmp_ok $calls, '<', $dec, "in fewer script calls ($calls for $dec)";
    diag "$dec decisions in $calls script calls";

    owes_units($t, $plain[0], 3, 'a plain key owes its 3 units');
    owes_units($t, $over[0], 2, 'an overridden key owes its 2');
    $t->upstream_clear;
};

subtest 'the same key many times in one pass: exactly its burst' => sub {
    my $k = fresh_key('same');
    my @r = burst($t, ($k) x 25);
    is scalar(grep { $_->{status} == 200 } @r), 10, 'exactly 10 pass';
    is scalar(grep { $_->{status} == 429 } @r), 15, 'the other 15 limited';
    is scalar(upstream_for($t, $k)), 10, 'upstream got exactly 10';
    owes_units($t, $k, 10, 'the key owes exactly 10 units');
    $t->upstream_clear;
};

subtest 'an override changed by hand: in force at once, in a batch' => sub {
    # a key seen without an override, blocked; one seen with one, freed;
    # one seen without, given burst 4 (it has spent 3): with other keys
    my ($blk, $free, $low) = ($plain[1], $over[1], $plain[2]);

    # $free was refused above: the node may refuse it from shared memory
    # for a second after (the documented life of a cached verdict)
    sleep 1.1;
    $t->redis('HSET', limit_key($blk), 'blocked', '1');
    $t->redis('DEL', limit_key($free));
    $t->redis('HSET', limit_key($low), 'burst', '4');

    my @others = @plain[3 .. $N - 1];
    my @keys = ($blk, $free, $free, $low, $low, @others);
    my @r = burst($t, @keys);
    my %st;
    push @{ $st{ $keys[$_] } }, $r[$_]{status} for 0 .. $#keys;
    is "@{ $st{$blk} }", '403', 'blocked at once (the hint said: none)';
    is "@{ $st{$free} }", '200 200',
        'override removed: the default burst at once';
    is join(' ', sort @{ $st{$low} }), '200 429',
        'burst lowered to 4 at once: one more passes';
    is scalar(grep { $st{$_}[0] == 200 } @others), scalar(@others),
        'the other keys of the batch pass';
    $t->upstream_clear;
};

subtest 'clients that leave while their group waits' => sub {
    my ($c, $last) = pending($t, map { fresh_key('gone') } 1 .. $N);
    # Redis paused: the calls stay in flight while half the clients go
    $t->redis('CLIENT', 'PAUSE', int(300 * ($VG ? DifyTest::slow() : 1)),
              'ALL');
    $c->[$_]->send($last->[$_]) for 0 .. $#$c;
    $c->[$_]->close for grep { $_ % 2 } 0 .. $#$c;
    my @r = map { answer($c->[$_]) } grep { !($_ % 2) } 0 .. $#$c;
    is tally(map { $_->{status} } @r), '200 x' . scalar(@r),
        'the clients that stayed are answered';
    my $r = patch($t, fresh_key('after'));
    is $r->{status}, 200, 'and the worker goes on';
    $t->upstream_clear;
};

subtest 'an override of the wrong type: the other keys of its batch' => sub {
    # not a hash (written by something else): HMGET fails with WRONGTYPE;
    # that must not take the whole batch's call down with it
    my $bad = fresh_key('wrongtype');
    $t->redis('SET', limit_key($bad), 'not a hash');
    my @good = map { fresh_key('beside') } 1 .. 5;
    my @r = burst($t, @good, $bad);
    is tally(map { $_->{status} } @r[0 .. 4]), '200 x5',
        'every other key of the batch decided by Redis (no 503)';
    is $r[5]{status}, 503,
        'the key itself takes the fallback, as a call of its own did';
    owes_units($t, $good[0], 1, 'charged once: the failed call wrote nothing');
    is $t->redis('TYPE', limit_key($bad)), 'string', 'and left as it was';
    $t->upstream_clear;
};

$t->done;

subtest 'two workers, two nginx: exact' => sub {
    my $t1 = DifyTest->new;
    $t1->start_redis;
    $t1->start_nginx(workers => 2, http => $HTTP);
    my $t2 = DifyTest->new;
    (my $http2 = $HTTP) =~ s/%%REDIS%%/127.0.0.1:${\ $t1->redis_port}/;
    $t2->start_nginx(workers => 2, http => $http2);
    for my $tt ($t1, $t2) {
        ok wait_for(DifyTest::timeout(5), sub {
            my $r = patch($tt, fresh_key('up'));
            $r->{status} == 200;
        }), 'on Redis';
    }
    my @k = map { fresh_key('two') } 1 .. 4;
    # each key 8 times through each nginx, all at once: 10 of 16 pass
    my @who = ((@k) x 16);
    my ($c1, $l1) = pending($t1, (@k) x 8);
    my ($c2, $l2) = pending($t2, (@k) x 8);
    my @c = (@$c1, @$c2);
    my @last = (@$l1, @$l2);
    sleep 0.05;
    $c[$_]->send($last[$_]) for 0 .. $#c;
    my %pass;
    for my $i (0 .. $#c) {
        $pass{ $who[$i] }++ if answer($c[$i])->{status} == 200;
    }
    is join(' ', map { $pass{$_} // 0 } @k), '10 10 10 10',
        'each key: exactly 10 of 16 over both nginx';
    $t2->done;
    $t1->done;
};

done_testing;
