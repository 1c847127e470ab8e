#!/usr/bin/perl
#
# dify_status_redis by host name, resolved in the worker by nginx's own
# resolver, a real DNS server (dnsmasq, on a loopback port, answering
# from a hosts file it reads again on SIGHUP, TTL 1 s):
#
#   - the name resolves, requests are decided by the Redis it names;
#   - the name moves to another Redis (127.0.0.2, same port), its TTL
#     runs out and the old one stops: the workers follow by themselves
#     (the answer is asked again when it expires, and on every new
#     connection), every request in between is decided by a Redis or by
#     the fallback, nothing else, and the keys' state is then in the new
#     Redis;
#   - the name stops resolving and the connection is lost: the fallback,
#     the failure logged once per worker, counted in
#     dify_status_redis_resolve_failures_total; the name comes back:
#     requests are decided by Redis again;
#   - without a resolver, a name that does not resolve fails nginx -t
#     with a clear message; one that does (localhost) is resolved once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use DifyTest;
use DifyLimit qw(fresh_key tat_key patch wait_for);

DifyTest::require_module();

my $DNSMASQ = (grep { -x } qw(/usr/sbin/dnsmasq /usr/bin/dnsmasq))[0];
plan skip_all => 'dnsmasq not installed (Debian: dnsmasq-base)'
    unless $DNSMASQ;

my $VG = DifyTest->valgrind;
my $WORKERS = $VG ? 1 : 2;
my $SLOW = $VG ? DifyTest::slow() : 1;

my $t = DifyTest->new;
my $dir = $t->dir;
my $hosts = "$dir/dns.hosts";
my $port = $t->redis_port;
my $dns_port = $t->port('DNS');

sub hosts {
    my ($line) = @_;
    open my $fh, '>', "$hosts.new" or die "$hosts: $!";
    print $fh $line ? "$line\n" : '';
    close $fh;
    rename "$hosts.new", $hosts or die "rename: $!";
}

hosts("127.0.0.1 redis.test");

my $dns = $t->_spawn('dnsmasq',
    [ $DNSMASQ, '--keep-in-foreground', "--port=$dns_port",
      '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv',
      '--no-hosts', "--addn-hosts=$hosts", '--local-ttl=1',
      '--conf-file=/dev/null', '--pid-file=', '--user=root',
      "--log-facility=$dir/dnsmasq.log" ],
    output => "$dir/dnsmasq.stderr");

sub reload_hosts {
    my ($line) = @_;
    hosts($line);
    kill 'HUP', $dns->{pid};
    # dnsmasq logs each reading of the file
    my $n = () = DifyTest::_slurp("$dir/dnsmasq.log") =~ /read \Q$hosts\E/g;
    wait_for(DifyTest::timeout(5), sub {
        my $m = () = DifyTest::_slurp("$dir/dnsmasq.log")
            =~ /read \Q$hosts\E/g;
        return $m > $n;
    });
}

# the first Redis on 127.0.0.1, the second on 127.0.0.2, the same port
$t->start_redis;

my $p2 = $t->_spawn('redis2',
    [ 'redis-server', '--port', $port, '--bind', '127.0.0.2', '--save', '',
      '--appendonly', 'no', '--dir', $dir, '--daemonize', 'no',
      '--logfile', "$dir/redis2.log" ],
    output => "$dir/redis2.stderr");

sub redis2 {
    my $out = `redis-cli -h 127.0.0.2 -p $port --raw @_ 2>&1`;
    chomp $out;
    return $out;
}

ok wait_for(DifyTest::timeout(10), sub { redis2('PING') eq 'PONG' }),
    'the second Redis answers on 127.0.0.2';

$t->start_nginx(workers => $WORKERS, http => qq{
    resolver 127.0.0.1:$dns_port valid=1s ipv6=off;
    resolver_timeout 1s;
    dify_status_redis redis.test:$port timeout=} . 200 * $SLOW
        . q{ms connect_timeout=} . 500 * $SLOW . q{ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status $dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=100 r/h;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
});

sub outcome { $_[0]{headers}{'x-dify-status'} // "status $_[0]{status}" }

sub decided {
    my $key = fresh_key('dns');
    my $r = patch($t, $key);
    return outcome($r) eq 'passed' ? $key : undef;
}

sub metric {
    my ($name) = @_;
    my $r = $t->request('GET', '/metrics');
    return $r->{body} =~ /^dify_status_$name (\d+)$/m ? $1 : undef;
}

# ------------------------------------------------------------------
my $key = wait_for(DifyTest::timeout(5), \&decided);
ok $key, 'the name resolves: decided by Redis';
is $t->redis('EXISTS', tat_key($key)), 1, 'in the Redis it names';
like $t->error_log, qr/redis "redis\.test:\d+" connected/,
    'connected, logged with the address as written';

# ------------------------------------------------------------------
# the name moves (past the answer's TTL, which nginx's resolver counts in
# whole seconds: valid=1s is up to 2 s), then the old Redis goes away

reload_hosts("127.0.0.2 redis.test");
sleep 2.2;
$t->stop_redis;
my $t_stop = time;

my (@seen, $moved);
my $deadline = time + DifyTest::timeout(10);
while (time < $deadline) {
    my $k = fresh_key('move');
    my $r = patch($t, $k);
    push @seen, outcome($r);
    if (outcome($r) eq 'passed') {
        $moved = $k;
        last if redis2('EXISTS', tat_key($k)) eq '1';
    }
    sleep 0.02;
}
ok $moved, 'decided by Redis again after the move';
is redis2('EXISTS', tat_key($moved)), '1', 'by the new Redis';
is_deeply [ grep { $_ ne 'passed' && $_ ne 'fallback_denied' } @seen ], [],
    'every request in between: decided by a Redis, or the fallback';
note sprintf '%d requests in %.2f s: %s', scalar(@seen), time - $t_stop,
    join ' ', @seen;

# ------------------------------------------------------------------
# the name stops resolving, and the connection is lost

my $fail0 = metric('redis_resolve_failures_total') // 0;
my $mark = $t->log_mark;
reload_hosts('');
sleep 1.5;                      # the resolver's cache (valid=1s) expires
redis2('CLIENT', 'KILL', 'TYPE', 'normal');

@seen = ();
$deadline = time + DifyTest::timeout(1.5);
while (time < $deadline) {
    push @seen, outcome(patch($t, fresh_key('gone')));
    sleep 0.05;
}
my $denied = grep { $_ eq 'fallback_denied' } @seen;
ok $denied >= 1, "the fallback while the name does not resolve ($denied)";
is_deeply [ grep { $_ ne 'fallback_denied' && $_ ne 'passed' } @seen ], [],
    'nothing but Redis or the fallback';
my @lines = grep { /could not be resolved/ }
    split /\n/, $t->error_log_since($mark);
cmp_ok scalar(@lines), '>=', 1, 'the lookup failure is logged';
cmp_ok scalar(@lines), '<=', $WORKERS, 'once per worker at most';
like $lines[0] // '', qr/"redis\.test" could not be resolved \(5: /,
    'with the resolver\'s reason';
cmp_ok metric('redis_resolve_failures_total') // 0, '>', $fail0,
    'dify_status_redis_resolve_failures_total grew';

reload_hosts("127.0.0.2 redis.test");
ok wait_for(DifyTest::timeout(5), \&decided),
    'the name resolves again: decided by Redis';

$t->stop_nginx;
$t->_stop_proc($p2, 'TERM', DifyTest::timeout(10));
$t->done;

# ------------------------------------------------------------------
# without a resolver: resolved once, at configuration time

my $t2 = DifyTest->new;
my ($rc, $out) = $t2->nginx_t(http => q{
    dify_status_redis redis.invalid:6379;
});
isnt $rc, 0, 'nginx -t fails for a name that does not resolve';
like $out, qr/host not found in "redis\.invalid:6379".*resolver/,
    '... and says why';

SKIP: {
    skip 'localhost does not resolve here', 1
        unless `getent hosts localhost 2>/dev/null` =~ /\S/;
    ($rc, $out) = $t2->nginx_t(http => q{
        dify_status_redis localhost:6379;
    });
    is $rc, 0, 'a name that resolves passes nginx -t' or diag $out;
}
$t2->done;

done_testing;
