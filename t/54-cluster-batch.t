#!/usr/bin/perl

# The limiter's batches in a real Redis Cluster (issue 11: "in a Cluster,
# batch per shard as far as Redis 7.0 allows").  Three primaries on
# loopback (ports 27301-27303, their buses on 27311-27313,
# cluster-node-timeout 1000 ms, no replicas), made once for the file;
# one nginx of two workers seeded with them.  A worker's flush sends the
# groups of the slots one node serves as one EVALSHA with numkeys 0 (the
# keys in ARGV); a node that no longer serves one of those keys fails
# the script before it writes ("non local key"), and each group is sent
# again alone, its keys declared, following MOVED or ASK.
#
#   - under concurrent load over keys of every primary, the script calls
#     each primary ran (INFO commandstats) are fewer than the decisions
#     of its keys, nothing is split, and the counts of 5r/h limits are
#     exact (each key's state on its primary);
#   - a slot left half migrated (IMPORTING on the target, MIGRATING on
#     the source, the key not yet there) while its key is batched with
#     keys of other slots of the same primary: the batch is split
#     (dify_status_redis_cluster_splits_total), the key is decided on the
#     target after ASK, every answer is 200 or 429 as the limits say, and
#     the counts are exact on both sides;
#   - a slot migrated for good (its key's state moved by MIGRATE, SETSLOT
#     NODE) while the worker's map still names the source: split again,
#     MOVED followed, the key's count goes on exactly where it was.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

use DifyTest ();
use DifyLimit qw(fresh_key key_hash patch_bytes wait_for);

DifyTest::require_module();

plan skip_all => 'redis-server and redis-cli needed'
    unless -x '/usr/bin/redis-server' && -x '/usr/bin/redis-cli';

my @PORTS = (27301 .. 27303);
my $TIMEOUT = (DifyTest->valgrind ? DifyTest::slow() : 1) * 2;

my $t = DifyTest->new;


# ------------------------------------------------------------------
# a small RESP client for any node (as t/52-cluster-limits.t)

sub rcmd {
    my ($port, @cmd) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Proto => 'tcp',
                                  Timeout => 5)
        or return { error => "connect: $!" };
    binmode $s;
    my $c = DifyTest::Conn->_wrap($s, 5);
    $c->send(DifyTest::_resp_cmd(@cmd));
    my @r = eval { ($c->_resp_reply) };
    my $err = $@;
    $c->close;
    return $err ? { error => $err } : $r[0];
}

sub nodes {
    my ($port) = @_;
    my $txt = rcmd($port, 'CLUSTER', 'NODES');
    return () if ref $txt;
    my @n;
    for (split /\n/, $txt) {
        my ($id, $addr, $flags) = split ' ';
        next unless $addr;
        my ($p) = $addr =~ /:(\d+)/;
        push @n, { id => $id, port => $p,
                   role => ($flags =~ /master/ ? 'master' : 'replica') };
    }
    return @n;
}

sub node_id {
    my ($port) = @_;
    my ($id) = map { $_->{id} } grep { $_->{port} == $port } nodes($port);
    return $id;
}

sub owner {
    my ($slot, $ask) = @_;
    my $map = rcmd($ask // $PORTS[0], 'CLUSTER', 'SLOTS');
    return undef if ref $map ne 'ARRAY';
    for my $r (@$map) {
        return $r->[2][1] if $slot >= $r->[0] && $slot <= $r->[1];
    }
    return undef;
}

sub keyslot { rcmd($PORTS[0], 'CLUSTER', 'KEYSLOT', $_[0]) }

# the module's key names (README, "Redis data layout")
sub state_key {
    my ($value, $name) = @_;
    return 'dify:status:{' . key_hash($value) . '}:tat'
           . ($name eq 'default' ? '' : ":$name");
}

sub slot_of { keyslot(state_key($_[0], 'default')) }
sub home { owner(slot_of($_[0])) }

# what a state owes, in units of the interval it was written under
sub owed {
    my ($port, $key) = @_;
    my $v = rcmd($port, 'GET', $key);
    return undef if ref $v eq 'HASH';
    return 0 unless defined $v;
    my ($tat, $iv) = $v =~ /^(\d+)\.(\d{11})$/ or return "bad state $v";
    my $now = rcmd($port, 'TIME');
    return undef if ref $now ne 'ARRAY';
    my $d = $tat - ($now->[0] * 1e6 + $now->[1]);
    return 0 if $d <= 0;
    return int(($d + $iv - 1) / $iv);
}

# tokens whose keys live on the primary $port, each in a slot of its own
my %USED;
sub tokens_on {
    my ($port, $n, $tag) = @_;
    my @k;
    for (1 .. 20000) {
        last if @k == $n;
        my $v = fresh_key($tag);
        my $s = slot_of($v);
        next if $USED{$s};
        next unless (owner($s) // 0) == $port;
        $USED{$s} = 1;
        push @k, $v;
    }
    die "no $n tokens on $port" unless @k == $n;
    return @k;
}

sub script_calls {
    my ($port) = @_;
    my $s = rcmd($port, 'INFO', 'commandstats');
    return undef if ref $s;
    my $n = 0;
    $n += $1 while $s =~ /^cmdstat_eval(?:sha)?:calls=(\d+)/mg;
    return $n;
}

sub metric {
    my ($name) = @_;
    my $r = $t->request('GET', '/metrics');
    return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : 0;
}

# every request of @$reqs ([token, prefix]) sent at once, each on its
# own connection; the answers in the same order
sub burst_send {
    my ($reqs) = @_;
    my @c = map { $t->connect } @$reqs;
    my $t0 = time;
    for my $i (0 .. $#c) {
        $c[$i]->send(patch_bytes($reqs->[$i][0], prefix => $reqs->[$i][1]));
    }
    return [ $t0, @c ];
}

sub burst_read {
    my ($t0, @c) = @{ $_[0] };
    return map { DifyLimit::_read($_, $t0, DifyTest::timeout(10)) } @c;
}

sub burst { burst_read(burst_send($_[0])) }

sub tally {
    my %n;
    $n{$_}++ for @_;
    return join ' ', map { "$_:$n{$_}" } sort keys %n;
}


# ------------------------------------------------------------------
# the cluster, once for the file

my $cdir = $t->dir . '/cluster';
mkdir $cdir or die "mkdir: $!";

for my $p (@PORTS) {
    mkdir "$cdir/$p" or die "mkdir: $!";
    $t->_spawn("cluster$p",
        [ 'redis-server', '--port', $p, '--bind', '127.0.0.1',
          '--cluster-enabled', 'yes',
          '--cluster-config-file', "$cdir/$p/nodes.conf",
          '--cluster-port', $p + 10,
          '--cluster-node-timeout', '1000',
          '--cluster-require-full-coverage', 'no',
          '--save', '', '--appendonly', 'no', '--dir', "$cdir/$p",
          '--daemonize', 'no', '--logfile', "$cdir/$p/redis.log" ],
        output => "$cdir/$p/stderr");
}

for my $p (@PORTS) {
    wait_for(DifyTest::timeout(20), sub { (rcmd($p, 'PING') // '') eq 'PONG' })
        or BAIL_OUT("redis-server on $p did not start");
}

{
    my ($rc, $out) = $t->_run(
        [ 'redis-cli', '--cluster', 'create',
          (map { "127.0.0.1:$_" } @PORTS),
          '--cluster-replicas', '0', '--cluster-yes' ],
        timeout => DifyTest::timeout(60));
    is $rc, 0, 'redis-cli --cluster create' or diag $out;
}

ok wait_for(DifyTest::timeout(30), sub {
    for my $p (@PORTS) {
        my $info = rcmd($p, 'CLUSTER', 'INFO');
        return 0 if ref $info || $info !~ /cluster_state:ok/
                    || $info !~ /cluster_slots_assigned:16384/
                    || $info !~ /cluster_known_nodes:3/;
    }
    return 1;
}), 'the cluster is up: 3 primaries, every slot assigned';

my @P = @PORTS;
my $SEEDS = join ' ', map { "127.0.0.1:$_" } @P;


# ------------------------------------------------------------------
# one nginx of two workers

# per day: nothing refills during the test
$t->start_nginx(http => "
    dify_status_redis $SEEDS cluster timeout=${TIMEOUT}s;
    dify_status_redis_fallback deny;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        location = /metrics { dify_status_metrics; }

        location /b/v1/ {
            dify_status on;
            dify_status_limit rate=5r/d;
            proxy_pass http://upstream;
        }

        location /h/v1/ {
            dify_status on;
            dify_status_limit name=h rate=1000r/d;
            proxy_pass http://upstream;
        }
    }
", workers => 2);

# every worker has a slot map: keys of every primary pass
ok wait_for(DifyTest::timeout(20), sub {
    my @r = burst([ map { [ fresh_key('warm'), '/h/v1' ] } 1 .. 12 ]);
    return !grep { $_->{status} != 200 } @r;
}), 'nginx answers with the cluster';


subtest 'batches per node: fewer script calls than decisions, exact'
=> sub {
    my %tok = map { $_ => [ tokens_on($_, 20, "b$_") ] } @P;
    my %calls0 = map { $_ => script_calls($_) } @P;
    my $dec0 = metric('dify_status_redis_decisions_total');
    my $split0 = metric('dify_status_redis_cluster_splits_total');

    # eight requests of each token at once (5r/d: 5 pass, 3 refused),
    # interleaved: 480 requests, each worker's pass mixing the primaries
    my @reqs;
    for my $i (1 .. 8) {
        for my $j (0 .. 19) {
            push @reqs, [ $tok{$_}[$j], '/b/v1' ] for @P;
        }
    }

    my @r = burst(\@reqs);
    is tally(map { $_->{status} } @r), '200:300 429:180',
       '5 of 8 passed for every token' or diag tally(map { $_->{status} } @r);

    my %n;
    for my $i (0 .. $#r) {
        $n{ $reqs[$i][0] }{ $r[$i]{status} }++;
    }
    my @off = grep { ($n{$_}{200} // 0) != 5 } keys %n;
    is scalar(@off), 0, 'exactly 5 for each of the 60 tokens';

    for my $p (@P) {
        my @o = grep { ($_ // '') ne '5' }
                map { owed($p, state_key($_, 'default')) } @{ $tok{$p} };
        is scalar(@o), 0, "each state on $p owes 5 units" or diag "@o";
    }

    # the 180 refused ones may be refused from shared memory
    my $dec = metric('dify_status_redis_decisions_total') - $dec0;
    my $calls = 0;
    for my $p (@P) {
        my $c = script_calls($p) - $calls0{$p};
        diag "primary $p: $c script calls";
        $calls += $c;
        ok $c < 100, "$p: fewer script calls ($c) than the 100 requests "
                     . "it admitted";
    }
    diag "decisions by Redis: $dec; script calls on the primaries: $calls";
    ok $dec >= 300, 'every admitted request decided by Redis';
    ok $calls < $dec, "fewer script calls ($calls) than decisions ($dec)";
    is metric('dify_status_redis_cluster_splits_total') - $split0, 0,
       'no batch split: every key was on its node';
};


# the state of the slot's key, on the node that owns the slot now
sub end_migration {
    my ($slot, $src, $dst) = @_;
    my $did = node_id($dst);
    my @ok = grep { (rcmd($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $did)
                     // '') eq 'OK' }
             $dst, $src, grep { $_ != $src && $_ != $dst } @P;
    is scalar(@ok), 3, "SETSLOT $slot NODE $dst on every node";
    ok wait_for(DifyTest::timeout(10), sub {
        !grep { (owner($slot, $_) // 0) != $dst } @P
    }), "every node has slot $slot on $dst";
}

# a burst of the key $k (8 on /b/v1) among 48 others (/h/v1, one each,
# all on the same primary), sent while $during runs, read after it
sub mixed {
    my ($k, $others, $during, $nk) = @_;
    my @reqs;
    for my $i (0 .. 47) {
        push @reqs, [ $k, '/b/v1' ] if $i % 6 == 3 && $nk-- > 0;
        push @reqs, [ $others->[$i], '/h/v1' ];
    }
    my $b = burst_send(\@reqs);
    $during->();
    my @r = burst_read($b);
    my @mine = map { $r[$_]{status} } grep { $reqs[$_][0] eq $k } 0 .. $#r;
    my @rest = map { $r[$_]{status} } grep { $reqs[$_][0] ne $k } 0 .. $#r;
    return (tally(@mine), tally(@rest));
}


# the key's groups meet others of its primary in a worker's pass for
# most bursts, not necessarily all: up to three, each on a fresh slot
# after a batch met a slot that moved from $src to $dst: the key owes its
# 5 units on $dst, every other key 1 on $src; true when a split was counted
sub owes_after_split {
    my ($k, $others, $src, $dst, $s0, $attempt) = @_;
    is owed($dst, state_key($k, 'default')), 5,
       "the key owes 5 units on $dst";
    my @o = grep { ($_ // '') ne '1' }
            map { owed($src, state_key($_, 'h')) } @$others;
    is scalar(@o), 0, "each other key owes 1 unit on $src" or diag "@o";

    my $s = metric('dify_status_redis_cluster_splits_total') - $s0;
    diag "attempt $attempt: $s batches split";
    return $s > 0;
}


subtest 'a slot half migrated while batched: split, ASK, exact' => sub {
    my ($src, $dst) = @P[0, 1];
    my $sid = node_id($src);
    my $did = node_id($dst);
    my $split0 = metric('dify_status_redis_cluster_splits_total');
    my $ask0 = metric('dify_status_redis_ask_total');

    for my $attempt (1 .. 3) {
        my ($k) = tokens_on($src, 1, "half$attempt");
        my @others = tokens_on($src, 48, "ho$attempt");
        my $slot = slot_of($k);
        my $s0 = metric('dify_status_redis_cluster_splits_total');

        # the key has no state yet: the source answers ASK for it, and
        # the target TRYAGAIN (its two keys missing) until the slot is
        # its own; the batch it was in is split at once
        is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $sid),
           'OK', "slot $slot importing on $dst";
        is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $did),
           'OK', "slot $slot migrating on $src";

        my ($mine, $rest) = mixed($k, \@others, sub {
            sleep 0.5;
            end_migration($slot, $src, $dst);
        }, 8);

        is $mine, '200:5 429:3', 'the migrating key: exactly 5 of 8';
        is $rest, '200:48', 'the others: all 48 passed';
        last if owes_after_split($k, \@others, $src, $dst, $s0, $attempt);
    }

    ok metric('dify_status_redis_cluster_splits_total') > $split0,
       'a node\'s batch was split';
    ok metric('dify_status_redis_ask_total') > $ask0,
       'its key went on to the target after ASK';
};


subtest 'a slot migrated for good under a stale map: split, MOVED, exact'
=> sub {
    my ($src, $dst) = @P[0, 2];
    my $sid = node_id($src);
    my $did = node_id($dst);
    my $split0 = metric('dify_status_redis_cluster_splits_total');
    my $moved0 = metric('dify_status_redis_moved_total');
    my $k;

    for my $attempt (1 .. 3) {
        ($k) = tokens_on($src, 1, "full$attempt");
        my @others = tokens_on($src, 48, "fo$attempt");
        my $slot = slot_of($k);
        my $s0 = metric('dify_status_redis_cluster_splits_total');

        # three units spent while the slot is on the source
        my @r = burst([ map { [ $k, '/b/v1' ] } 1 .. 3 ]);
        is tally(map { $_->{status} } @r), '200:3', 'three pass first';
        is owed($src, state_key($k, 'default')), 3, "3 units on $src";

        is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $sid),
           'OK', "slot $slot importing on $dst";
        is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $did),
           'OK', "slot $slot migrating on $src";
        my $ks = rcmd($src, 'CLUSTER', 'GETKEYSINSLOT', $slot, 100);
        ok ref $ks eq 'ARRAY' && @$ks >= 1, 'the slot has the key\'s state';
        is rcmd($src, 'MIGRATE', '127.0.0.1', $dst, '', 0, 5000, 'KEYS',
                @$ks), 'OK', 'MIGRATE';
        end_migration($slot, $src, $dst);

        # the workers' maps still have the slot on the source
        my ($mine, $rest) = mixed($k, \@others, sub { }, 6);

        is $mine, '200:2 429:4', 'the moved key: exactly 2 more of 6';
        is $rest, '200:48', 'the others: all 48 passed';
        last if owes_after_split($k, \@others, $src, $dst, $s0, $attempt);
    }

    ok metric('dify_status_redis_cluster_splits_total') > $split0,
       'a node\'s batch was split';
    ok metric('dify_status_redis_moved_total') > $moved0,
       'its key went on to the new owner after MOVED';

    # once the map is read again, the slot's key is batched on its node
    ok wait_for(DifyTest::timeout(5), sub {
        my @s = burst([ [ $k, '/b/v1' ],
                        map { [ $_, '/h/v1' ] } tokens_on($dst, 3, 'fd') ]);
        return $s[0]{status} == 429 && !grep { $_->{status} != 200 }
                                               @s[1 .. 3];
    }), 'the key is refused on its new node, the others pass';
};


# clients that leave while their groups wait in a batch, in a node's
# call, or in a split group's retries (TRYAGAIN on the target): the
# others are answered, and the worker frees what it held (the teardown
# checks the sanitizers' reports)
subtest 'clients gone while batched, in flight or split' => sub {
    my ($src, $dst) = @P[1, 2];
    my ($k) = tokens_on($src, 1, 'gone');
    my @others = tokens_on($src, 48, 'go');
    my $slot = slot_of($k);

    is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', node_id($src)),
       'OK', "slot $slot importing on $dst";
    is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', node_id($dst)),
       'OK', "slot $slot migrating on $src";

    my @reqs;
    for my $i (0 .. 47) {
        push @reqs, [ $k, '/b/v1' ] if $i % 4 == 1;
        push @reqs, [ $others[$i], '/h/v1' ];
    }
    my ($t0, @c) = @{ burst_send(\@reqs) };

    # every other connection closes at once, the key's half after 0.2 s
    my (@keep, @kreq);
    for my $i (0 .. $#c) {
        if ($i % 2 == 0) {
            push @keep, $c[$i];
            push @kreq, $reqs[$i];
        } elsif ($reqs[$i][0] ne $k) {
            $c[$i]->close;
        }
    }
    sleep 0.2;
    $c[$_]->close for grep { $_ % 2 && $reqs[$_][0] eq $k } 0 .. $#c;
    sleep 0.3;
    end_migration($slot, $src, $dst);

    my @r = burst_read([ $t0, @keep ]);
    my @bad = grep { $r[$_]{status} != 200
                     && !($kreq[$_][0] eq $k && $r[$_]{status} == 429) }
              0 .. $#r;
    is scalar(@bad), 0, 'those who stayed: 200, or 429 for the key'
        or diag tally(map { $_->{status} } @r);

    my @s = burst([ map { [ $_, '/h/v1' ] } tokens_on($src, 6, 'ga') ]);
    is tally(map { $_->{status} } @s), '200:6', 'nginx answers as before';
};


subtest 'nothing logged per request, no fallback' => sub {
    my $log = $t->error_log_since(0) // '';
    my @err = grep { /\[(?:error|crit|alert|emerg)\]/ && !/: 429 too_many/ }
              split /\n/, $log;
    is scalar(@err), 0, 'no error logged but the refusals'
        or diag join "\n", grep { defined } @err[0 .. 4];
    is metric('dify_status_redis_timeouts_total'), 0, 'no timeout';
};

# (after the subtest above: an error is logged here, once)
subtest 'an override of the wrong type: only its own key falls back'
=> sub {
    my $p = $P[0];
    my ($bad, @good) = tokens_on($p, 16, 'wt');
    rcmd($p, 'SET', 'dify:status:{' . key_hash($bad) . '}:limit',
         'not a hash');
    my $split0 = metric('dify_status_redis_cluster_splits_total');

    # the node's batch fails with WRONGTYPE, having written nothing: its
    # groups go again alone, keys declared
    my @r = burst([ map { [ $_, '/b/v1' ] } @good, $bad ]);
    is tally(map { $_->{status} } @r[0 .. 14]), '200:15',
       'every other key of the node decided by Redis (no 503)';
    is $r[15]{status}, 503, 'the key itself takes the fallback';
    my @o = grep { ($_ // '') ne '1' }
            map { owed($p, state_key($_, 'default')) } @good;
    is scalar(@o), 0, 'each other key charged once' or diag "@o";
    is metric('dify_status_redis_cluster_splits_total') - $split0, 0,
       'not a split of a stale map';
};

$t->done;

done_testing;
