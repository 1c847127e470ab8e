#!/usr/bin/perl
#
# A new worker (start, reload) queues the commands of its first requests
# behind its Redis handshake instead of taking the fallback: Redis is up
# and answers well within `timeout`.  Redis is reached through a proxy
# that adds LAT ms each way (a remote Redis, exaggerated so that the
# window is wide enough to hit every time).
#
# In valgrind mode nginx is ~10x slower: the module's timeouts and the
# waits are scaled by DifyTest::slow() (the proxy's latency is not: it
# does not run under valgrind); there is no reload in that mode (a single
# process), so only the start is checked.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use IO::Select;
use DifyTest;
use DifyLimit qw(fresh_key patch wait_for);

DifyTest::require_module();
my $LAT = 0.1;      # s each way
my $SLOW = DifyTest->valgrind ? DifyTest::slow() : 1;

my $t = DifyTest->new;
$t->start_redis;
my $rport = $t->redis_port;

# the latency proxy, a child in its own process group (the harness's spawn)
my $proxy_port_file = $t->dir . '/proxy.port';
my $code = <<'PERL';
use strict; use warnings;
use IO::Socket::INET; use IO::Select; use Time::HiRes qw(time);
my ($rport, $lat, $pf, $life) = @ARGV;
my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
    Listen => 64, ReuseAddr => 1) or die $!;
open my $fh, '>', $pf; print $fh $l->sockport; close $fh;
my $sel = IO::Select->new($l);
my (%peer, %q);     # fileno -> peer socket; fileno -> [[due, data]]
my %sock;
my $end = time + $life;
while (time < $end) {
    my $now = time;
    my $next = 0.01;
    for my $fn (keys %q) {
        my $s = $sock{$fn} or next;
        while (@{ $q{$fn} } && $q{$fn}[0][0] <= $now) {
            my $d = shift @{ $q{$fn} };
            if (!defined $d->[1]) { shutdown $s, 1; next }
            syswrite $s, $d->[1];
        }
    }
    for my $s ($sel->can_read($next)) {
        if ($s == $l) {
            my $c = $l->accept or next;
            my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                PeerPort => $rport) or do { close $c; next };
            $peer{fileno $c} = $u; $peer{fileno $u} = $c;
            $sock{fileno $c} = $c; $sock{fileno $u} = $u;
            $q{fileno $c} = []; $q{fileno $u} = [];
            $sel->add($c, $u);
            next;
        }
        my $p = $peer{fileno $s} or next;
        my $n = sysread $s, my $buf, 65536;
        if (!$n) {
            push @{ $q{fileno $p} }, [ time + $lat, undef ];
            $sel->remove($s);
            next;
        }
        push @{ $q{fileno $p} }, [ time + $lat, $buf ];
    }
}
PERL
my $pp = $t->_spawn('proxy', [ $^X, '-e', $code, $rport, $LAT,
                               $proxy_port_file, DifyTest::timeout(120) ],
                    output => $t->dir . '/proxy.log');
wait_for(DifyTest::timeout(5), sub { -s $proxy_port_file });
my ($proxy) = DifyTest::_slurp($proxy_port_file) =~ /(\d+)/;

my $TIMEOUT = 1 * $SLOW;
my $conf = qq{
    dify_status_redis 127.0.0.1:$proxy timeout=${TIMEOUT}s connect_timeout=${\ (2 * $SLOW) }s;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=100 r/s;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }
    }
};

sub one {
    my $r = patch($t, fresh_key('r'));
    return sprintf '%d %s %.0fms', $r->{status},
        $r->{headers}{'x-dify-status'} // '-', $r->{elapsed} * 1000;
}

# at start: the port accepts before the worker has finished its handshake
$t->start_nginx(workers => 1, http => $conf);
my $first = one();
like $first, qr/^200 passed/, "at start, Redis ${\ ($LAT*2000)}ms RTT, "
    . "timeout ${TIMEOUT}s: the first request is decided by Redis ($first)";

wait_for(DifyTest::timeout(5), sub { one() =~ /^200 passed/ });

# after a reload
SKIP: {
    skip 'valgrind mode: a single process, no reload', 2 if $t->valgrind;
    ok $t->reload, 'reload';
    $first = one();
    like $first, qr/^200 passed/, "after a reload: the first request is "
        . "decided by Redis ($first)";
}
note 'then: ' . join ', ', map { one() } 1 .. 3;

$t->done;
done_testing;
