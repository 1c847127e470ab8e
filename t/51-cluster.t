#!/usr/bin/perl

# Redis Cluster: three primaries and three replicas on loopback (ports
# 27001-27006, their buses on 27011-27016, cluster-node-timeout 1000 ms,
# full coverage not required so that one shard down leaves the others
# serving), made once for the file with redis-cli --cluster create.  Two
# nginx instances of two workers each, seeded with the three primaries;
# dnsmasq on 27098 for the nodes named by host names.
#
#   - the directive's errors: several addresses without "cluster", db=,
#     a prefix holding a hash tag, a duplicate address;
#   - keys spread over every primary (by CLUSTER KEYSLOT and the map):
#     each key's state is on its primary, counts exact on each, with no
#     MOVED once the map is known, and commands counted per node;
#   - a slot of busy keys migrated under load (SETSLOT IMPORTING and
#     MIGRATING, MIGRATE, SETSLOT NODE): ASK and MOVED both seen and
#     counted, every request decided by Redis, counts still exact;
#   - a migration left half done: that slot's keys wait their whole
#     timeout (TRYAGAIN, retried), then the fallback; another slot of the
#     same primary is decided by Redis meanwhile;
#   - the admin tool with --cluster, on a node that does not hold the
#     key;
#   - nodes that report host names: resolved through nginx's resolver,
#     exact counts on each; without a resolver, their keys take the
#     fallback, logged;
#   - kill -9 of a primary under load: its replica promoted, the module
#     follows without a reload, only that shard's keys took the fallback
#     meanwhile (the other shards' keys were all decided by Redis), and
#     counts are exact on the promoted shard afterwards.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::INET;
use IPC::Open3 qw(open3);
use POSIX ();
use Time::HiRes qw(sleep time);

use DifyTest qw(uuid route);
use DifyLimit qw(fresh_key tat_key limit_key patch wait_for rl);

DifyTest::require_module();

plan skip_all => 'redis-server and redis-cli needed'
    unless -x '/usr/bin/redis-server' && -x '/usr/bin/redis-cli';

my @PORTS = (27001 .. 27006);
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
    my $r = eval { $c->_resp_reply } // { error => $@ };
    $c->close;
    return $r;
}

# many commands on one connection, the replies in order
sub rpipe {
    my ($port, @cmds) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Proto => 'tcp',
                                  Timeout => 10)
        or die "connect $port: $!";
    binmode $s;
    my $c = DifyTest::Conn->_wrap($s, 10);
    $c->send(join '', map { DifyTest::_resp_cmd(@$_) } @cmds);
    my @r = map { $c->_resp_reply } @cmds;
    $c->close;
    return @r;
}

# id, port, role and master id of every node, as one node sees them
sub nodes {
    my ($port) = @_;
    my $txt = rcmd($port, 'CLUSTER', 'NODES');
    return () if ref $txt;
    my @n;
    for (split /\n/, $txt) {
        my ($id, $addr, $flags, $master, undef, undef, undef, $link, @slots)
            = split ' ';
        next unless $addr;
        my ($p) = $addr =~ /:(\d+)/;
        push @n, { id => $id, port => $p, flags => $flags,
                   master => $master, link => $link, slots => \@slots,
                   role => ($flags =~ /master/ ? 'master' : 'replica'),
                   fail => ($flags =~ /\bfail\b/ ? 1 : 0) };
    }
    return @n;
}

# the port of the primary of a slot, as that node's CLUSTER SLOTS says
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

sub metric {
    my ($tt, $name, $label) = @_;
    my $r = $tt->request('GET', '/metrics');
    my $re = defined $label ? qr/^\Q$name\E\{\Q$label\E\} (\d+)$/m
                            : qr/^\Q$name\E (\d+)$/m;
    return $r->{body} =~ $re ? $1 : undef;
}

sub metrics_sum {
    my ($name, $label) = @_;
    my $n = 0;
    $n += metric($_, $name, $label) // 0 for $t, $t2;
    return $n;
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
    my @n = nodes($PORTS[0]);
    return 3 == grep { $_->{role} eq 'master' } @n;
}), 'the cluster is up: 3 primaries, 3 replicas, every slot assigned';

my @PRIMARIES = sort { $a <=> $b }
                map { $_->{port} } grep { $_->{role} eq 'master' }
                nodes($PORTS[0]);
is scalar(@PRIMARIES), 3, 'three primaries';


# ------------------------------------------------------------------
# the configuration's errors

my $SEEDS = join ' ', map { "127.0.0.1:$_" } @PRIMARIES;

sub conf_err {
    my ($redis, $extra, $re, $name) = @_;
    my ($rc, $out) = $t->nginx_t(http => qq{
        $redis
        $extra
        server {
            listen 127.0.0.1:%%PORT%%;
            location / { dify_status on; dify_status_limit rate=5 r/h; }
        }
    });
    if (defined $re) {
        isnt $rc, 0, "$name: refused";
        like $out, $re, "$name: message";
    } else {
        is $rc, 0, "$name: accepted" or diag $out;
    }
}

subtest 'configuration errors' => sub {
    conf_err("dify_status_redis $SEEDS;", '',
             qr/several addresses need "cluster"/, 'several addresses');
    conf_err("dify_status_redis $SEEDS cluster db=1;", '',
             qr/"db=" cannot be used with "cluster"/, 'db= with cluster');
    conf_err("dify_status_redis $SEEDS cluster;",
             'dify_status_redis_prefix "a{b}:";',
             qr/dify_status_redis_prefix "a\{b\}:" cannot hold/,
             'a prefix with a hash tag');
    conf_err("dify_status_redis $SEEDS cluster;",
             'dify_status_redis_prefix "a}";',
             qr/cannot hold "\{" or "\}"/, 'a prefix with "}"');
    conf_err("dify_status_redis 127.0.0.1:$PRIMARIES[0] "
             . "127.0.0.1:$PRIMARIES[0] cluster;", '',
             qr/duplicate address "127\.0\.0\.1:$PRIMARIES[0]"/,
             'a duplicate address');
    conf_err("dify_status_redis $SEEDS cluster bogus;", '',
             qr/invalid parameter "bogus"/, 'an unknown parameter');
    conf_err("dify_status_redis 127.0.0.1:$PRIMARIES[0] redis-2 cluster;",
             '', qr/invalid parameter "redis-2"/,
             'a second address without its port');
    conf_err("dify_status_redis cluster;", '',
             qr/dify_status_redis needs an address/, 'no address');
    conf_err("dify_status_redis $SEEDS cluster timeout=1s;",
             'dify_status_redis_prefix "a:b:";', undef,
             'seeds, cluster, a plain prefix');
    conf_err("dify_status_redis 127.0.0.1:$PRIMARIES[0] cluster;",
             'dify_status_redis_prefix "{x}";', qr/cannot hold/,
             'one seed is a cluster too');
    conf_err("dify_status_redis 127.0.0.1:$PRIMARIES[0];",
             'dify_status_redis_prefix "{x}";', undef,
             'a hash tag in the prefix without a cluster');
};


# ------------------------------------------------------------------
# two nginx instances

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

my $HTTP = "
    dify_status_redis $SEEDS cluster timeout=${TIMEOUT}s;
    dify_status_redis_fallback deny;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        location = /metrics { dify_status_metrics; }
" . loc('/v1', 'dify_status_limit rate=5 r/h;')
  . loc('/m/v1', 'dify_status_limit rate=200 r/h;')
  . loc('/k/v1', 'dify_status_limit rate=100000 r/h;')
  . "
    }
";

$t->start_nginx(http => $HTTP, workers => 2);
$t2->start_nginx(http => $HTTP, workers => 2);

my @BOTH = ($t->port('PORT'), $t2->port('PORT'));

# every worker of both has a map: keys of every shard pass
ok wait_for(DifyTest::timeout(20), sub {
    for my $i (1 .. 12) {
        my $r = patch($t, fresh_key('warm'), prefix => '/k/v1',
                      port => $BOTH[ $i % 2 ]);
        return 0 unless $r->{status} == 200;
    }
    return 1;
}), 'both instances answer with the cluster';

# keys by primary: $by{$port} = [ keys ]
my %by;
sub keys_on {
    my ($port, $n, $tag) = @_;
    my @k;
    for (1 .. 2000) {
        my $k = fresh_key($tag);
        my $o = owner(keyslot(tat_key($k)));
        push @k, $k if defined $o && $o == $port;
        last if @k == $n;
    }
    return @k;
}


subtest 'keys of every primary: their state there, exact counts on each'
=> sub {
    my $moved0 = metrics_sum('dify_status_redis_moved_total');

    for my $p (@PRIMARIES) {
        my @k = keys_on($p, 2, "p$p");
        is scalar(@k), 2, "two keys on $p";

        for my $k (@k) {
            is keyslot(tat_key($k)), keyslot(limit_key($k)),
               'both keys of one limit key in one slot';

            my @st;
            for my $i (1 .. 8) {
                my $r = patch($t, $k, port => $BOTH[ $i % 2 ]);
                push @st, $r->{status};
            }
            is "@st", '200 200 200 200 200 429 429 429',
               "rate=5 r/h on $p: exactly 5 of 8, over two instances";
            is rcmd($p, 'EXISTS', tat_key($k)), 1, "the state is on $p";
        }
    }

    is metrics_sum('dify_status_redis_moved_total'), $moved0,
       'no MOVED: every command went to its slot\'s primary';

    for my $p (@PRIMARIES) {
        my $n = metric($t, 'dify_status_redis_node_commands_total',
                       "node=\"127.0.0.1:$p\"");
        ok defined $n && $n > 0, "commands counted for 127.0.0.1:$p";
        my $up = metric($t, 'dify_status_redis_connections_up',
                        "node=\"127.0.0.1:$p\"");
        ok defined $up && $up >= 1,
           "connections_up by node: a connection up to 127.0.0.1:$p";
    }

    ok metrics_sum('dify_status_redis_topology_refreshes_total') >= 4,
       'slot maps read (each worker at least once)';
};


# ------------------------------------------------------------------
# a background load: requests in turn over the keys and both instances,
# one line per answer in $file (key, status, $dify_status, remaining);
# at most $max requests, $pause seconds apart; stops when $file.stop
# exists

sub load_start {
    my ($file, $prefix, $max, $pause, @keys) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE);
        open my $fh, '>', $file or POSIX::_exit(1);
        select((select($fh), $| = 1)[0]);
        my $i = 0;
        until (-e "$file.stop") {
            if ($i >= $max) {
                sleep 0.05;
                next;
            }
            sleep $pause if $pause;
            my $k = $keys[ $i % @keys ];
            my $r = patch($t, $k, prefix => $prefix,
                          port => $BOTH[ int($i / @keys) % 2 ],
                          timeout => DifyTest::timeout(10));
            printf $fh "%s %d %s %s\n", $k, $r->{status},
                   $r->{headers}{'x-dify-status'} // '-', rl($r)->{r} // '-';
            $i++;
        }
        close $fh;
        POSIX::_exit(0);
    }
    return $pid;
}

sub load_stop {
    my ($file, $pid) = @_;
    open my $s, '>', "$file.stop" or die;
    close $s;
    waitpid $pid, 0;
    open my $fh, '<', $file or die;
    my @lines = map { [ split ' ' ] } <$fh>;
    return @lines;
}


subtest 'a slot of busy keys migrated under load: ASK, MOVED, exact' => sub {
    my ($src, $dst) = @PRIMARIES[0, 1];
    my @keys = keys_on($src, 3, 'mig');
    is scalar(@keys), 3, "three keys on $src";

    # the slot of the first key moves; its keys and the others' do not
    my $slot = keyslot(tat_key($keys[0]));
    my ($sid) = map { $_->{id} } grep { $_->{port} == $src } nodes($src);
    my ($did) = map { $_->{id} } grep { $_->{port} == $dst } nodes($src);

    my $moved0 = metrics_sum('dify_status_redis_moved_total');
    my $ask0 = metrics_sum('dify_status_redis_ask_total');

    my $file = $t->dir . '/load-mig';
    # at most 150 a key: under the rate, so that each asks Redis
    my $pid = load_start($file, '/m/v1', 450, 0.004, @keys);

    sleep 0.5;

    is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $sid), 'OK',
       'target importing';
    is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $did), 'OK',
       'source migrating';

    sleep 0.2;

    my $ks = rcmd($src, 'CLUSTER', 'GETKEYSINSLOT', $slot, 100);
    ok ref $ks eq 'ARRAY' && @$ks >= 1, 'the slot has keys';
    is rcmd($src, 'MIGRATE', '127.0.0.1', $dst, '', 0, 5000, 'KEYS', @$ks),
       'OK', 'MIGRATE';

    sleep 0.3;

    for my $p ($dst, $src, grep { $_ != $src && $_ != $dst } @PRIMARIES) {
        is rcmd($p, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $did), 'OK',
           "SETSLOT NODE on $p";
    }

    sleep 1;

    my @r = load_stop($file, $pid);

    ok @r > 20, scalar(@r) . ' requests during the migration';

    my @bad = grep { $_->[2] !~ /^(?:passed|limited)$/ } @r;
    is scalar(@bad), 0, 'every one decided by Redis'
        or diag explain [ @bad[0 .. ($#bad > 9 ? 9 : $#bad)] ];

    # each request counted once: the remaining counts of a key's
    # answers are 199, 198, ... with no gap and no repeat
    for my $k (@keys) {
        my @left = sort { $b <=> $a } map { $_->[3] }
                   grep { $_->[0] eq $k } @r;
        my $n = @left;
        is "@left", join(' ', map { 200 - $_ } 1 .. $n),
           "$n requests of a key, each counted once";
    }

    ok metrics_sum('dify_status_redis_ask_total') > $ask0, 'ASK counted';
    ok metrics_sum('dify_status_redis_moved_total') > $moved0,
       'MOVED counted';

    is owner($slot, $dst), $dst, "the slot is on $dst now";
    is rcmd($dst, 'EXISTS', tat_key($keys[0])), 1, 'the state moved with it';

    # after: the keys of that slot go to the new primary at once
    my $k = (keys_on($dst, 1, 'after'))[0];
    my @st = map { patch($t, $k, port => $BOTH[ $_ % 2 ])->{status} } 1 .. 7;
    is "@st", '200 200 200 200 200 429 429', 'exact on the new owner';
};


subtest 'a migration that never ends: its keys wait, then the fallback'
=> sub {
    my ($src, $dst) = @PRIMARIES[0, 1];
    my ($k, $o) = keys_on($src, 2, 'stuck');
    my $slot = keyslot(tat_key($k));
    if (keyslot(tat_key($o)) == $slot) {
        ($o) = keys_on($src, 1, 'stuck2');
    }
    my ($sid) = map { $_->{id} } grep { $_->{port} == $src } nodes($src);
    my ($did) = map { $_->{id} } grep { $_->{port} == $dst } nodes($src);

    # the key has state: Redis answers TRYAGAIN while its override is
    # missing on this side
    is patch($t, $k)->{status}, 200, 'the key has its state';
    is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $sid), 'OK',
       'importing';
    is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $did), 'OK',
       'migrating, and left so';

    my $r = patch($t, $k);
    is $r->{headers}{'x-dify-status'}, 'fallback_denied',
       'the key of the stuck slot: the fallback';
    ok $r->{elapsed} >= $TIMEOUT * 0.9,
       'after its whole timeout, retries included';
    is patch($t2, $o)->{headers}{'x-dify-status'}, 'passed',
       'another slot of the same primary: decided by Redis';

    is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'STABLE'), 'OK', 'stable';
    is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'STABLE'), 'OK', 'stable';
    is patch($t, $k)->{headers}{'x-dify-status'}, 'passed',
       'decided by Redis again';
};


# ------------------------------------------------------------------
# tools/dify-status-limit --cluster, pointed at a node that does not
# hold the key: redis-cli -c follows the redirections of every command

my $TOOL = "$FindBin::Bin/../tools/dify-status-limit";

sub tool {
    my ($port, $stdin, @args) = @_;
    local $ENV{DIFY_REDIS_HOST} = '127.0.0.1';
    local $ENV{DIFY_REDIS_PORT} = $port;
    local $SIG{PIPE} = 'IGNORE';
    my $pid = open3(my $in, my $out, undef, 'bash', $TOOL, @args);
    print $in $stdin if defined $stdin;
    close $in;
    my $output = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    return ($? >> 8, $output);
}

subtest 'the admin tool in a cluster' => sub {
    my $home = $PRIMARIES[0];
    my $other = $PRIMARIES[1];
    my $k = (keys_on($home, 1, 'tool'))[0];
    my ($rc, $out);

    ($rc, $out) = tool($other, "$k\n", 'show', '-');
    is $rc, 1, 'without --cluster, another node refuses (MOVED)';
    like $out, qr/MOVED/, 'and says so';

    ($rc, $out) = tool($other, "$k\n", '--cluster', '--db', '1', 'show', '-');
    is $rc, 2, '--cluster with --db: a usage error';

    ($rc, $out) = tool($other, "$k\n", '--cluster', 'set', '-', 'rate=3r/h');
    is $rc, 0, 'set rate=3r/h' or diag $out;
    is rcmd($home, 'HGET', limit_key($k), 'rate'), '3r/h',
       "the override is on the key's node, $home";

    my @st = map { patch($t, $k, port => $BOTH[ $_ % 2 ])->{status} } 1 .. 4;
    is "@st", '200 200 200 429', 'nginx applies it: exactly 3 of 4';

    ($rc, $out) = tool($other, "$k\n", '-c', 'show', '-');
    is $rc, 0, 'show' or diag $out;
    like $out, qr/rate:\s+3r\/h/, 'show: the rate';

    ($rc, $out) = tool($other, "$k\n", '-c', 'state', '-');
    is $rc, 0, 'state (TIME, GET, PTTL)' or diag $out;

    ($rc, $out) = tool($other, "$k\n", '-c', 'reset', '-');
    is $rc, 0, 'reset' or diag $out;
    is rcmd($home, 'EXISTS', tat_key($k)), 0, 'the state is gone';

    # a key not limited yet: a limited one may be refused from the cache
    my $kb = (keys_on($home, 1, 'tool'))[0];
    ($rc, $out) = tool($other, "$kb\n", '-c', 'block', '-');
    is $rc, 0, 'block' or diag $out;
    is patch($t2, $kb)->{status}, 403, 'blocked: 403';
    ($rc, $out) = tool($other, "$kb\n", '-c', 'unblock', '-');
    is $rc, 0, 'unblock' or diag $out;
    is patch($t2, $kb)->{status}, 200, 'unblocked: 200';

    ($rc, $out) = tool($other, "$k\n", '-c', 'unblock', '-');
    is $rc, 0, 'unblock' or diag $out;

    ($rc, $out) = tool($other, "$k\n", '-c', 'remove', '-');
    is $rc, 0, 'remove' or diag $out;
    is rcmd($home, 'EXISTS', limit_key($k)), 0, 'the override is gone';

    {
        local $ENV{DIFY_REDIS_CLUSTER} = 1;
        ($rc, $out) = tool($other, undef, 'show', '--hash', '0' x 64);
        is $rc, 0, 'DIFY_REDIS_CLUSTER=1 works as --cluster' or diag $out;
    }
};


subtest 'kill -9 of a primary under load: the replica takes over' => sub {
    my $victim = $PRIMARIES[2];
    my ($vid) = map { $_->{id} } grep { $_->{port} == $victim }
                nodes($PRIMARIES[0]);
    my ($replica) = map { $_->{port} }
                    grep { $_->{master} eq $vid } nodes($PRIMARIES[0]);
    ok $replica, "$victim has a replica: $replica";

    my @kv = keys_on($victim, 3, 'vic');
    my @ko = ((keys_on($PRIMARIES[0], 2, 'oth')),
              (keys_on($PRIMARIES[1], 2, 'oth')));

    # replicated before the kill: the replica has caught up
    rcmd($victim, 'WAIT', 1, 1000);

    my $fo0 = metrics_sum('dify_status_redis_failovers_total');
    is $fo0, 0, 'no failover seen before';

    my $file = $t->dir . '/load-kill';
    my $pid = load_start($file, '/k/v1', 1e9, 0, @kv, @ko);

    sleep 0.5;

    my $p = $t->{procs}{"cluster$victim"};
    $t->_stop_proc($p, 'KILL', DifyTest::timeout(10));

    ok wait_for(DifyTest::timeout(30), sub {
        my ($n) = grep { $_->{port} == $replica } nodes($replica);
        return $n && $n->{role} eq 'master';
    }), "$replica promoted";

    # the module follows: the victim's keys pass again, from Redis
    my $t0 = time;
    my $back = wait_for(DifyTest::timeout(20), sub {
        for my $k (@kv) {
            my $r = patch($t, $k, prefix => '/k/v1');
            return 0 unless ($r->{headers}{'x-dify-status'} // '')
                            eq 'passed';
            $r = patch($t2, $k, prefix => '/k/v1');
            return 0 unless ($r->{headers}{'x-dify-status'} // '')
                            eq 'passed';
        }
        return 1;
    });
    ok $back, 'the victim\'s keys are decided by Redis again';
    for my $tt ($t, $t2) {
        ok metric($tt, 'dify_status_redis_failovers_total') >= 1,
           'the failover is counted';
    }

    sleep 0.5;

    my @r = load_stop($file, $pid);
    my %kv = map { $_ => 1 } @kv;

    my @other = grep { !$kv{ $_->[0] } } @r;
    my @vict = grep { $kv{ $_->[0] } } @r;

    ok @other > 10, scalar(@other) . ' requests on the other shards';
    my @bad = grep { $_->[2] ne 'passed' } @other;
    is scalar(@bad), 0, 'the other shards\' keys: all decided by Redis'
        or diag explain [ @bad[0 .. ($#bad > 9 ? 9 : $#bad)] ];

    my @fb = grep { $_->[2] eq 'fallback_denied' } @vict;
    ok @fb > 0, scalar(@fb) . ' of the victim\'s requests took the '
                . 'fallback meanwhile';
    my @odd = grep { $_->[2] !~ /^(?:passed|fallback_denied)$/ } @vict;
    is scalar(@odd), 0, 'and nothing else';

    # exact again, on the promoted shard
    is owner(keyslot(tat_key($kv[0])), $replica), $replica,
       "$replica serves the victim's slots";
    my @k = keys_on($replica, 2, 'prom');
    for my $k (@k) {
        my @st = map { patch($t, $k, port => $BOTH[ $_ % 2 ])->{status} }
                 1 .. 7;
        is "@st", '200 200 200 200 200 429 429',
           "exact on the promoted primary $replica";
    }

    my $log = $t->error_log . $t2->error_log;
    unlike $log, qr/\[(?:alert|crit|emerg)\]/, 'no alert in the logs';
};


# ------------------------------------------------------------------
# nodes that name themselves (cluster-preferred-endpoint-type hostname):
# resolved by nginx's resolver, a real dnsmasq on port 27098.  Last: the
# other instances read these names too (and have no resolver)

my $DNSMASQ = (grep { -x } qw(/usr/sbin/dnsmasq /usr/bin/dnsmasq))[0];

SKIP: {
skip 'dnsmasq not installed (Debian: dnsmasq-base)', 1 unless $DNSMASQ;

subtest 'nodes named by host names, through the resolver' => sub {
    my $dir = $t->dir;

    # after the kill: the nodes alive, the primaries now
    my @live = grep { (rcmd($_, 'PING') // '') eq 'PONG' } @PORTS;
    my @prim = sort { $a <=> $b } map { $_->{port} }
               grep { $_->{role} eq 'master' && !$_->{fail}
                      && @{ $_->{slots} } } nodes($live[0]);
    is scalar(@prim), 3, 'three primaries: ' . join(' ', @prim);

    my $hosts = "$dir/cluster.hosts";
    open my $fh, '>', $hosts or die "$hosts: $!";
    print $fh "127.0.0.1 node-$_.test\n" for @PORTS;
    close $fh;

    $t->_spawn('dnsmasq',
        [ $DNSMASQ, '--keep-in-foreground', '--port=27098',
          '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv',
          '--no-hosts', "--addn-hosts=$hosts", '--local-ttl=1',
          '--conf-file=/dev/null', '--pid-file=', '--user=root',
          "--log-facility=$dir/dnsmasq.log" ],
        output => "$dir/dnsmasq.stderr");

    for my $p (@live) {
        is rcmd($p, 'CONFIG', 'SET', 'cluster-announce-hostname',
                "node-$p.test"), 'OK', "$p announces node-$p.test";
    }
    for my $p (@live) {
        rcmd($p, 'CONFIG', 'SET', 'cluster-preferred-endpoint-type',
             'hostname');
    }

    ok wait_for(DifyTest::timeout(20), sub {
        for my $p (@prim) {
            my $map = rcmd($p, 'CLUSTER', 'SLOTS');
            return 0 unless ref $map eq 'ARRAY' && @$map;
            for my $r (@$map) {
                return 0 unless ($r->[2][0] // '') =~ /^node-\d+\.test$/;
            }
        }
        return 1;
    }), 'every primary reports host names in CLUSTER SLOTS';

    my $t3 = DifyTest->new;
    $t3->start_nginx(workers => 1, http => "
        resolver 127.0.0.1:27098 valid=1s ipv6=off;
        resolver_timeout 1s;
        dify_status_redis 127.0.0.1:$prim[0] cluster
                          timeout=${TIMEOUT}s;
        dify_status_redis_fallback deny;
        server {
            listen 127.0.0.1:%%PORT%%;
            add_header X-Dify-Status \$dify_status always;
            location = /metrics { dify_status_metrics; }
    " . loc('/v1', 'dify_status_limit rate=5 r/h;') . "
        }
    ");

    ok wait_for(DifyTest::timeout(10), sub {
        patch($t3, fresh_key('nw'))->{status} == 200;
    }), 'decided by Redis';

    for my $p (@prim) {
        my $k = (keys_on($p, 1, "name$p"))[0];
        my @st = map { patch($t3, $k)->{status} } 1 .. 7;
        is "@st", '200 200 200 200 200 429 429', "exact on node-$p.test";
        my $n = metric($t3, 'dify_status_redis_node_commands_total',
                       "node=\"node-$p.test:$p\"");
        ok defined $n && $n > 0, "commands counted for node-$p.test:$p";
    }
    $t3->done;

    # without a resolver, a named node cannot be reached: its slots take
    # the fallback, logged once
    my $t4 = DifyTest->new;
    $t4->start_nginx(workers => 1, http => "
        dify_status_redis 127.0.0.1:$prim[0] cluster
                          timeout=${TIMEOUT}s;
        dify_status_redis_fallback deny;
        server {
            listen 127.0.0.1:%%PORT%%;
            add_header X-Dify-Status \$dify_status always;
    " . loc('/v1', 'dify_status_limit rate=5 r/h;') . "
        }
    ");
    my $k = (keys_on($prim[1], 1, 'nores'))[0];
    ok wait_for(DifyTest::timeout(10), sub {
        ((patch($t4, $k)->{headers}{'x-dify-status'}) // '')
            eq 'fallback_denied';
    }), 'without a resolver: the fallback';
    my $named = "node-$prim[1].test:$prim[1]";
    like $t4->error_log,
         qr/redis cluster: node "\Q$named\E" is a name, and there is no/,
         'logged';
    $t4->done;
};
}


$t2->done;
$t->done;

done_testing;
