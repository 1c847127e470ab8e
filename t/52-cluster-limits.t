#!/usr/bin/perl

# Several limits on different keys in a real Redis Cluster (issue 12,
# item 1: "limits on different keys may live in different Cluster slots:
# there, make the charges of a refused request undone or never made").
#
# Three primaries and three replicas on loopback (ports 27101-27106,
# their buses on 27111-27116, cluster-node-timeout 1000 ms, full coverage
# not required), made once for the file as t/51-cluster.t does.  Two
# nginx instances of two workers each.  Each location has three limits
# on three keys: name=tenant key=$http_x_tenant, name=all key=all and the
# per-token default, and the tenant and the token are chosen (by CLUSTER
# KEYSLOT on the module's key names and the slot map) so that the three
# states live on three different primaries.  Every count is read from
# the state on the primary that owns it (GET of {H}:tat..., in units of
# its own interval), never from the answers alone.
#
#   - a refund given back in the node's shadow too: a unit returned by
#     a request the tenant refused admits the next request at once (it
#     was refused from shared memory for a second before the fix);
#   - exact counts for each limit, requests sent at once over both
#     instances: the tenant limit refuses, and what the token and "all"
#     were charged for the refused requests is given back on their
#     primaries; the quotas left are exact afterwards;
#   - a request refused by the token limit, then by "all": no charge on
#     the other two primaries (the refused tenant and token never get a
#     state at all);
#   - one primary down for good (kill -9, its replica told not to fail
#     over), under dify_status_redis_fallback deny: requests whose tenant
#     lives there get 503 at once and leave nothing on the two other
#     primaries; requests of another tenant are decided by Redis as
#     before; once the replica is promoted by hand (CLUSTER FAILOVER
#     TAKEOVER), the shard's counts go on exactly where they were.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

use DifyTest ();
use DifyLimit qw(fresh_key key_hash patch concurrent wait_for);

DifyTest::require_module();

plan skip_all => 'redis-server and redis-cli needed'
    unless -x '/usr/bin/redis-server' && -x '/usr/bin/redis-cli';

my @PORTS = (27101 .. 27106);
my $TIMEOUT = (DifyTest->valgrind ? DifyTest::slow() : 1) * 2;

my $t = DifyTest->new;
my $t2 = DifyTest->new;


# ------------------------------------------------------------------
# a small RESP client for any node

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
    return $err ? { error => $err } : $r[0];     # undef: a nil reply
}

sub nodes {
    my ($port) = @_;
    my $txt = rcmd($port, 'CLUSTER', 'NODES');
    return () if ref $txt;
    my @n;
    for (split /\n/, $txt) {
        my ($id, $addr, $flags, $master) = split ' ';
        next unless $addr;
        my ($p) = $addr =~ /:(\d+)/;
        push @n, { id => $id, port => $p, master => $master,
                   role => ($flags =~ /master/ ? 'master' : 'replica'),
                   fail => ($flags =~ /\bfail\b/ ? 1 : 0) };
    }
    return @n;
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

sub limit_key_of {
    my ($value) = @_;
    return 'dify:status:{' . key_hash($value) . '}:limit';
}

# what a state owes, in units of the interval it was written under,
# read on the node $port (undef when that node does not answer)
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

# polls until the state owes $want units (a refund is one round trip
# after the answer), then reports it
sub owes {
    my ($port, $key, $want, $name) = @_;
    my $got;
    wait_for(DifyTest::timeout(3), sub {
        $got = owed($port, $key);
        return defined $got && $got eq $want;
    });
    is $got, $want, $name;
}

# the value of the home of $key (a limit key value), by slot
sub home { owner(keyslot(state_key($_[0], 'default'))) }

# a value whose keys live on the primary $port: "$tag-N"
sub value_on {
    my ($port, $tag, $gen) = @_;
    for (1 .. 5000) {
        my $v = $gen ? $gen->() : "$tag-" . int(rand 1e9);
        my $o = home($v);
        return $v if defined $o && $o == $port;
    }
    die "no value on $port";
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
          '--cluster-replica-validity-factor', '0',
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
          '--cluster-replicas', '1', '--cluster-yes' ],
        timeout => DifyTest::timeout(60));
    is $rc, 0, 'redis-cli --cluster create' or diag $out;
}

ok wait_for(DifyTest::timeout(30), sub {
    for my $p (@PORTS) {
        my $info = rcmd($p, 'CLUSTER', 'INFO');
        return 0 if ref $info || $info !~ /cluster_state:ok/
                    || $info !~ /cluster_slots_assigned:16384/
                    || $info !~ /cluster_known_nodes:6/;
    }
    return 3 == grep { $_->{role} eq 'master' } nodes($PORTS[0]);
}), 'the cluster is up: 3 primaries, 3 replicas, every slot assigned';

my @PRIMARIES = sort { $a <=> $b }
                map { $_->{port} } grep { $_->{role} eq 'master' }
                nodes($PORTS[0]);
is scalar(@PRIMARIES), 3, 'three primaries';

my $SEEDS = join ' ', map { "127.0.0.1:$_" } @PRIMARIES;

# key=all is a constant: its primary is given; the tenants and the
# tokens are chosen on the two others
my $P_ALL = home('all');
my ($P_TEN, $P_TOK) = grep { $_ != $P_ALL } @PRIMARIES;
ok $P_ALL && $P_TEN && $P_TOK,
   "\"all\" on $P_ALL, tenants on $P_TEN, tokens on $P_TOK";

sub tenant { value_on($P_TEN, 'tenant') }
sub token { value_on($P_TOK, undef, sub { fresh_key('tok') }) }


# ------------------------------------------------------------------
# two nginx instances of two workers each

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

# rates per hour or day: nothing refills during the test
my $HTTP = "
    dify_status_redis $SEEDS cluster timeout=${TIMEOUT}s;
    dify_status_redis_fallback deny;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        add_header X-Dify-Limit \$dify_status_limit always;
        location = /metrics { dify_status_metrics; }
" . loc('/a/v1', 'dify_status_limit name=tenant key=$http_x_tenant
                                       rate=4r/h;
                   dify_status_limit name=all key=all rate=10r/h;
                   dify_status_limit rate=6r/h;')
  . loc('/d/v1', 'dify_status_limit name=tenant key=$http_x_tenant
                                       rate=3r/h;
                   dify_status_limit name=alld key=all rate=1000r/d;
                   dify_status_limit name=tokd rate=100r/d;')
  . loc('/s/v1', 'dify_status_limit name=tenant key=$http_x_tenant
                                       rate=4r/h;
                   dify_status_limit name=alls key=all rate=1000r/h;
                   dify_status_limit name=toks rate=6r/h;')
  . loc('/warm/v1', 'dify_status_limit name=warm rate=100000r/h;')
  . "
    }
";

$t->start_nginx(http => $HTTP, workers => 2);
$t2->start_nginx(http => $HTTP, workers => 2);

my @BOTH = ($t->port('PORT'), $t2->port('PORT'));

# every worker of both has a slot map: keys of every primary pass
ok wait_for(DifyTest::timeout(20), sub {
    for my $i (1 .. 12) {
        my $r = patch($t, fresh_key('warm'), prefix => '/warm/v1',
                      port => $BOTH[ $i % 2 ]);
        return 0 unless $r->{status} == 200;
    }
    return 1;
}), 'both instances answer with the cluster';

sub req {
    my ($tenant, $token, %o) = @_;
    return patch($t, $token, prefix => $o{prefix} // '/a/v1',
                 port => $o{port} // $BOTH[0],
                 headers => [ 'X-Tenant' => $tenant ]);
}

sub st { join ' ', map { $_->{status} } @_ }
sub by { join ' ', map { $_->{headers}{'x-dify-limit'} // '-' } @_ }

my $ALL = state_key('all', 'all');


subtest 'the three keys of a request live on three primaries' => sub {
    my ($ten, $tok) = (tenant(), token());
    my %on = ($P_TEN => state_key($ten, 'tenant'),
              $P_ALL => $ALL,
              $P_TOK => state_key($tok, 'default'));
    isnt keyslot($on{$P_TEN}), keyslot($on{$P_ALL}), 'tenant and all: two slots';
    isnt keyslot($on{$P_TOK}), keyslot($on{$P_ALL}), 'token and all: two slots';
    is keyslot(limit_key_of($ten)), keyslot($on{$P_TEN}),
       'an override and its states: one slot';

    my $r = req($ten, $tok, prefix => '/warm/v1');
    is $r->{status}, 200, 'warm';
};


subtest 'a refund is given back in the node\'s shadow too' => sub {
    my ($t1, $t2, $tok) = (tenant(), tenant(), token());
    my $TOK = state_key($tok, 'toks');

    # the token spends 5 of 6 on the second instance
    my @s = map { req($t1, $tok, prefix => '/s/v1', port => $BOTH[1]) }
            1 .. 4;
    push @s, req($t2, $tok, prefix => '/s/v1', port => $BOTH[1]);
    is st(@s), '200 200 200 200 200', 'five pass';
    owes($P_TOK, $TOK, 5, "toks on $P_TOK: 5");

    # on the first instance, which has no shadow of the first tenant:
    # Redis refuses it, the token's 6th unit is charged, then given back
    my $r = req($t1, $tok, prefix => '/s/v1');
    is $r->{status}, 429, 'the first tenant is spent';
    is $r->{headers}{'x-dify-limit'}, 'tenant', 'refused by its limit';
    owes($P_TOK, $TOK, 5, "toks on $P_TOK: still 5, given back");

    # the token's last unit is there for the other tenant, on the first
    # instance too: its shadow must not keep the charge it gave back
    $r = req($t2, $tok, prefix => '/s/v1');
    is $r->{status}, 200, 'the token\'s 6th unit admits the other tenant';
    is $r->{headers}{'x-dify-limit'}, undef, 'not refused by "toks"'
        or diag $r->{headers}{'x-dify-status'};
    owes($P_TOK, $TOK, 6, "toks on $P_TOK: 6");
};


subtest 'exact counts for each limit; the refused requests charged nowhere'
=> sub {
    my ($ten, $tok) = (tenant(), token());
    my $TEN = state_key($ten, 'tenant');
    my $TOK = state_key($tok, 'default');

    # six at once over both instances (and their workers): the tenant's
    # 4r/h admits exactly 4; "all" (10) and the token (6) have room for
    # all six, so that a charge not yet given back never refuses one
    # (README: between the two calls the charge is visible)
    my @r = concurrent($t, 6, $tok, prefix => '/a/v1', ports => \@BOTH,
                       headers => [ 'X-Tenant' => $ten ]);
    my @pass = grep { $_->{status} == 200 } @r;
    my @lim = grep { $_->{status} == 429 } @r;
    is scalar(@pass), 4, 'exactly 4 of 6 passed (tenant 4r/h)'
        or diag st(@r);
    is scalar(@lim), 2, 'the 2 others limited';
    is_deeply [ map { $_->{headers}{'x-dify-limit'} } @lim ],
              [ ('tenant') x 2 ], 'each refused by the tenant limit';

    owes($P_TEN, $TEN, 4, "tenant on $P_TEN: 4 units owed");
    owes($P_ALL, $ALL, 4, "all on $P_ALL: 4, the 2 refused given back");
    owes($P_TOK, $TOK, 4, "token on $P_TOK: 4, the 2 refused given back");

    for my $p (grep { $_ != $P_TEN } @PRIMARIES) {
        like((rcmd($p, 'EXISTS', $TEN) // {})->{error} // '',
             qr/MOVED \d+ 127\.0\.0\.1:$P_TEN/,
             "$p holds no tenant state: MOVED to $P_TEN");
    }

    # the quotas left are exact: the token has 2, "all" 6.  A node whose
    # shadow took a state from Redis while the other node's refused
    # requests were still charged may refuse from it for up to a second
    # (README, "A refused key is refused from shared memory for up to a
    # second"): wait that second out
    sleep 1.1;
    my $ten2 = tenant();
    my @s = map { req($ten2, $tok, port => $BOTH[ $_ % 2 ]) } 1 .. 4;
    is st(@s), '200 200 429 429', 'the token: exactly 2 more (6r/h)';
    is by(@s), '- - default default', 'refused by the token limit';

    owes($P_TOK, $TOK, 6, "token on $P_TOK: 6");
    owes($P_TEN, state_key($ten2, 'tenant'), 2,
         "the second tenant on $P_TEN: 2, its 2 refused given back");
    owes($P_ALL, $ALL, 6, "all on $P_ALL: 6, the 2 refused given back");

    # "all" has 4 left: four tenants of four tokens, then a fifth refused
    my @pairs = map { [ tenant(), token() ] } 1 .. 5;
    @s = map { req(@{ $pairs[$_] }, port => $BOTH[ $_ % 2 ]) } 0 .. 4;
    is st(@s), '200 200 200 200 429', '"all": exactly 4 more (10r/h)';
    is by(@s), '- - - - all', 'the fifth refused by "all"';

    owes($P_ALL, $ALL, 10, "all on $P_ALL: 10");
    my ($lt, $lk) = @{ $pairs[4] };
    owes($P_TEN, state_key($lt, 'tenant'), 0,
         "the refused tenant: nothing on $P_TEN");
    owes($P_TOK, state_key($lk, 'default'), 0,
         "the refused token: nothing on $P_TOK");
    for my $i (0 .. 3) {
        owes($P_TEN, state_key($pairs[$i][0], 'tenant'), 1,
             "tenant " . ($i + 1) . ": 1");
    }

    # and "all" stays at 10 while refusing (on both instances)
    @s = map { req(tenant(), token(), port => $BOTH[ $_ % 2 ]) } 1 .. 4;
    is st(@s), '429 429 429 429', '"all" refuses on both instances';
    owes($P_ALL, $ALL, 10, "all on $P_ALL: still 10");
};


subtest 'one primary down: its keys take the fallback, nothing charged '
        . 'elsewhere' => sub {
    my $ALLD = state_key('all', 'alld');
    my ($ten, $tok) = (tenant(), token());
    my $TEN = state_key($ten, 'tenant');
    my $TOK = state_key($tok, 'tokd');

    # a tenant on the token's primary: its requests do not touch $P_TEN
    my $ten_ok = value_on($P_TOK, 'tenant');

    my @s = map { req($ten, $tok, prefix => '/d/v1', port => $BOTH[ $_ % 2 ]) }
            1 .. 2;
    is st(@s), '200 200', 'two pass before';
    owes($P_TEN, $TEN, 2, "tenant on $P_TEN: 2");
    owes($P_ALL, $ALLD, 2, "alld on $P_ALL: 2");
    owes($P_TOK, $TOK, 2, "tokd on $P_TOK: 2");

    # the tenant's primary dies, and its replica is told not to take over
    my ($vid) = map { $_->{id} } grep { $_->{port} == $P_TEN }
                nodes($P_ALL);
    my ($replica) = map { $_->{port} }
                    grep { $_->{master} eq $vid } nodes($P_ALL);
    ok $replica, "$P_TEN has a replica: $replica";
    is rcmd($replica, 'CONFIG', 'SET', 'cluster-replica-no-failover', 'yes'),
       'OK', 'its replica will not fail over by itself';
    # replicated before the kill: a write of ours in the tenant's slot,
    # acknowledged by the replica, comes after the module's (a fresh
    # replica may still be in its first sync)
    my $sync = '{' . key_hash($ten) . '}:t52-sync';
    ok wait_for(DifyTest::timeout(20), sub {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $P_TEN, Proto => 'tcp',
                                      Timeout => 5) or return 0;
        binmode $s;
        my $c = DifyTest::Conn->_wrap($s, 5);
        $c->send(DifyTest::_resp_cmd('SET', $sync, 1)
                 . DifyTest::_resp_cmd('WAIT', 1, 500));
        my @r = eval { ($c->_resp_reply, $c->_resp_reply) };
        $c->close;
        return ($r[1] // 0) eq '1';
    }), 'the replica has the states';

    $t->_stop_proc($t->{procs}{"cluster$P_TEN"}, 'KILL',
                   DifyTest::timeout(10));

    # a request in flight may have taken the lost connection's path;
    # from then on each of them is refused at once, on both instances
    ok wait_for(DifyTest::timeout(10), sub {
        my @d = map { req($ten, $tok, prefix => '/d/v1', port => $_) } @BOTH;
        return 2 == grep { ($_->{headers}{'x-dify-status'} // '')
                           eq 'fallback_denied' } @d;
    }), 'the tenant\'s requests take the fallback (deny)';

    my @d = map { req($ten, $tok, prefix => '/d/v1', port => $BOTH[ $_ % 2 ]) }
            1 .. 6;
    is st(@d), '503 503 503 503 503 503', 'six more: 503';
    is join(' ', map { $_->{headers}{'x-dify-status'} } @d),
       join(' ', ('fallback_denied') x 6), 'each by the fallback';

    owes($P_ALL, $ALLD, 2,
         "alld on $P_ALL: still 2, the denied requests given back");
    owes($P_TOK, $TOK, 2,
         "tokd on $P_TOK: still 2, the denied requests given back");

    # another tenant, whose keys avoid the dead primary: decided by Redis
    @s = map { req($ten_ok, $tok, prefix => '/d/v1', port => $BOTH[ $_ % 2 ]) }
         1 .. 3;
    is st(@s), '200 200 200', 'a tenant on a live primary: passed';
    is join(' ', map { $_->{headers}{'x-dify-status'} } @s),
       'passed passed passed', 'decided by Redis';
    @s = map { req($ten_ok, $tok, prefix => '/d/v1', port => $BOTH[ $_ % 2 ]) }
         1 .. 2;
    is st(@s), '429 429', 'its tenant limit exact (3r/h)';
    owes($P_TOK, state_key($ten_ok, 'tenant'), 3, "that tenant on $P_TOK: 3");
    owes($P_ALL, $ALLD, 5, "alld on $P_ALL: 2 + 3");
    owes($P_TOK, $TOK, 5, "tokd on $P_TOK: 2 + 3");

    # the replica promoted by hand: the shard goes on where it was
    is rcmd($replica, 'CLUSTER', 'FAILOVER', 'TAKEOVER'), 'OK',
       "CLUSTER FAILOVER TAKEOVER on $replica";
    ok wait_for(DifyTest::timeout(20), sub {
        my $o = owner(keyslot($TEN), $replica);
        return defined $o && $o == $replica;
    }), "$replica serves the tenant's slot";

    my $r;
    ok wait_for(DifyTest::timeout(20), sub {
        $r = req($ten, $tok, prefix => '/d/v1');
        return ($r->{headers}{'x-dify-status'} // '') ne 'fallback_denied';
    }), 'the tenant is decided by Redis again';
    is $r->{status}, 200, 'its third request passes (3r/h)';
    @s = map { req($ten, $tok, prefix => '/d/v1', port => $BOTH[ $_ % 2 ]) }
         1 .. 2;
    is st(@s), '429 429', 'then limited: its count went on exactly';
    is by(@s), 'tenant tenant', 'by the tenant limit';

    owes($replica, $TEN, 3, "tenant on $replica: 3");
    owes($P_ALL, $ALLD, 6, "alld on $P_ALL: 6, the refused given back");
    owes($P_TOK, $TOK, 6, "tokd on $P_TOK: 6");

    my $log = $t->error_log . $t2->error_log;
    unlike $log, qr/\[(?:alert|crit|emerg)\]/, 'no alert in the logs';
    unlike $log, qr/giving back the quota of a refused request failed/,
           'no refund failed';
};


$t2->done;
$t->done;

done_testing;
