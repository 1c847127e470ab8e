#!/usr/bin/perl
#
# The Debian package (make deb, DIFY_DEB=its path): lintian finds no
# error; its contents and dependencies are those of Debian's own
# libnginx-mod-* packages; dpkg -i enables it through
# /etc/nginx/modules-enabled/, the stock /etc/nginx/nginx.conf plus a
# server that uses the module passes nginx -t, the enabled module serves
# a real request; dpkg -r disables it and dpkg -P leaves nothing behind.
#
# It changes the system (dpkg): it runs only as root, only when the
# package is not installed already, and puts everything back on exit,
# whatever happened (dpkg -P, the test server removed).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route ids_body);

my $DEB  = $ENV{DIFY_DEB};
my $PKG  = 'libnginx-mod-http-dify-status';
my $CONF = '/etc/nginx/conf.d/zz-dify-status-t60.conf';
my $LINK = '/etc/nginx/modules-enabled/50-mod-http-dify-status.conf';

plan skip_all => 'DIFY_DEB is not set (make test sets it, after make deb)'
    unless $DEB;
plan skip_all => "DIFY_DEB $DEB does not exist" unless -f $DEB;
plan skip_all => 'not root: the test installs and removes the package'
    unless $> == 0;
plan skip_all => 'not under a sanitizer: the package holds the release build'
    if $ENV{DIFY_SANITIZE};
plan skip_all => 'no Debian nginx (/usr/sbin/nginx, /etc/nginx/nginx.conf)'
    unless -x '/usr/sbin/nginx' && -f '/etc/nginx/nginx.conf';
plan skip_all => "$PKG is installed already: not touching it"
    if installed();

sub run {
    my (@cmd) = @_;
    my $out = `@cmd 2>&1`;
    return ($? >> 8, $out);
}

sub installed {
    my $s = `dpkg-query -W -f='\${Status}' $PKG 2>/dev/null`;
    return $s =~ /installed/ && $s !~ /not-installed/;
}

sub known {
    my $s = `dpkg-query -W -f='\${Status}' $PKG 2>/dev/null`;
    return $? == 0 && $s !~ /not-installed/;
}

# every path (with type, mode and link target) where the package could
# leave something: compared before install and after purge
my @WATCH = qw(/etc/nginx /usr/lib/nginx /usr/share/nginx/modules-available
               /usr/share/doc/libnginx-mod-http-dify-status
               /usr/bin/dify-status-limit
               /usr/share/man/man1/dify-status-limit.1.gz);

sub snapshot {
    my @l;
    for my $p (@WATCH) {
        next unless -e $p || -l $p;
        push @l, `find $p -printf '%p %y %m %l\\n' 2>/dev/null`;
    }
    push @l, map { "$_\n" } glob("/var/lib/dpkg/info/$PKG.*");
    return join '', sort @l;
}

my $before = snapshot();
my ($armed, $cleanup_done) = (1, 0);

sub cleanup {
    return if !$armed || $cleanup_done++;
    local $?;
    unlink $CONF;
    system("dpkg -P $PKG >/dev/null 2>&1") if known();
}
END { local $?; cleanup() }
$SIG{INT} = $SIG{TERM} = sub { cleanup(); exit 1 };

# --- the package itself ----------------------------------------------

subtest 'lintian: no errors' => sub {
    plan skip_all => 'lintian is not installed' unless `which lintian` =~ /\S/;
    my ($rc, $out) = run("lintian --no-tag-display-limit '$DEB'");
    unlike $out, qr/^E: /m, 'no E: line' or diag $out;
    ok $rc == 0 || $out !~ /^E: /m, "lintian exit $rc" or diag $out;
    note $out if $out =~ /\S/;
};

my ($rc, $ctl) = run("dpkg-deb -f '$DEB'");
is $rc, 0, 'dpkg-deb reads the control file';
like $ctl, qr/^Package: \Q$PKG\E$/m, "Package: $PKG";
like $ctl, qr/^Section: httpd$/m, 'Section: httpd, as libnginx-mod-*';

my ($abi) = `dpkg-query -W -f='\${Provides}' nginx 2>/dev/null`
    =~ /(nginx-abi-[\w.-]+)/;
ok $abi, "the installed nginx provides an ABI ($abi)";
like $ctl, qr/^Depends:.*\b\Q$abi\E\b/m,
    "Depends on exactly that nginx ABI ($abi)";
like $ctl, qr/^Depends:.*\blibhiredis[\w.]+\b/m, 'Depends on libhiredis';
like $ctl, qr/^Depends:.*\blibjansson\d/m, 'Depends on libjansson';

(my $files = `dpkg-deb -c '$DEB'`) =~ s/^\S+\s+\S+\s+\d+\s+\S+\s+\S+\s+\.//mg;
for my $f (
    '/usr/lib/nginx/modules/ngx_http_dify_status_module.so',
    '/usr/share/nginx/modules-available/mod-http-dify-status.conf',
    '/usr/bin/dify-status-limit',
    '/usr/share/man/man1/dify-status-limit.1.gz',
    '/usr/share/doc/libnginx-mod-http-dify-status/README.md.gz',
    '/usr/share/doc/libnginx-mod-http-dify-status/copyright',
    '/usr/share/doc/libnginx-mod-http-dify-status/changelog.gz',
    '/usr/share/doc/libnginx-mod-http-dify-status/examples/'
        . 'dify-status-server.conf',
    '/usr/share/doc/libnginx-mod-http-dify-status/examples/'
        . 'dify-status-standalone.conf',
) {
    like $files, qr/^\Q$f\E$/m, "the package holds $f";
}
unlike $files, qr{^/etc/}m,
    'nothing in /etc: the postinst makes the modules-enabled link';

# --- dpkg -i ----------------------------------------------------------

($rc, my $out) = run("dpkg -i '$DEB'");
is $rc, 0, 'dpkg -i' or diag $out;
ok installed(), 'dpkg-query: installed';

is readlink($LINK),
    '/usr/share/nginx/modules-available/mod-http-dify-status.conf',
    "$LINK links to modules-available, as Debian's modules";
is DifyTest::_slurp(
       '/usr/share/nginx/modules-available/mod-http-dify-status.conf'),
    "load_module modules/ngx_http_dify_status_module.so;\n",
    'its load_module line';
ok -x '/usr/bin/dify-status-limit', '/usr/bin/dify-status-limit';
like `/usr/bin/dify-status-limit --help 2>&1`, qr/^Usage: dify-status-limit/,
    'dify-status-limit --help';

($rc, $out) = run('/usr/sbin/nginx -t');
is $rc, 0, 'nginx -t: the stock nginx.conf with the module enabled'
    or diag $out;

# the example server of the package, on a port no other file uses
{
    my $ex = DifyTest::_slurp('/usr/share/doc/libnginx-mod-http-dify-status/'
                              . 'examples/dify-status-server.conf');
    like $ex, qr/^\s*dify_status on;/m, 'the example uses the module';
    $ex =~ s/listen 8080;/listen 127.0.0.1:58061;/;
    DifyTest::_spew($CONF, $ex);
    ($rc, $out) = run('/usr/sbin/nginx -t');
    is $rc, 0, 'nginx -t: the stock nginx.conf plus the example server'
        or diag $out;
    like $out, qr/test is successful/, 'test is successful';
    unlink $CONF;
}

# a real request through the module as the package enables it: the
# installed modules-enabled file, its path relative to nginx's prefix
{
    my $t = DifyTest->new;
    symlink '/usr/lib/nginx/modules', $t->dir . '/modules'
        or die "symlink: $!";
    $t->start_nginx(no_module => 1,
        main => 'include /etc/nginx/modules-enabled/*.conf;',
        server => q{
            location /v1 {
                dify_status on;
                proxy_pass http://upstream;
            }
        });
    my $r = $t->request('PATCH', route('nope', 'enable'),
        headers => { Authorization => 'Bearer dataset-x',
                     'Content-Type' => 'application/json' },
        body => '{}');
    is $r->{status}, 404, 'the installed module answers a bad dataset id';
    $t->nothing_upstream('the rejected request went nowhere');
    my $ok = ids_body(uuid(2));
    $r = $t->request('PATCH', route(uuid(1), 'enable'),
        headers => { Authorization => 'Bearer dataset-x',
                     'Content-Type' => 'application/json' },
        body => $ok);
    is $r->{status}, 200, 'a valid batch passes';
    $t->done;
}

# --- dpkg -r, dpkg -P -------------------------------------------------

($rc, $out) = run("dpkg -r $PKG");
is $rc, 0, 'dpkg -r' or diag $out;
ok !installed(), 'dpkg-query: not installed';
ok !-e $LINK && !-l $LINK, 'the modules-enabled link is gone';
ok !-e '/usr/lib/nginx/modules/ngx_http_dify_status_module.so',
    'the module is gone';
ok !-e '/usr/bin/dify-status-limit', 'dify-status-limit is gone';
ok !-e '/usr/share/nginx/modules-available/mod-http-dify-status.conf',
    'the modules-available file is gone';
my @left = grep { !m{^/etc/nginx/modules-enabled/50-mod-http-dify-status\.conf\.removed }
                  && !m{^/var/lib/dpkg/info/\Q$PKG\E\.(?:postrm|list|md5sums)$} }
           split /\n/, snapshot();
is join("\n", @left, ''), $before,
    'dpkg -r leaves only what Debian keeps until purge (the link marked '
    . '.removed, the postrm)';
($rc, $out) = run('/usr/sbin/nginx -t');
is $rc, 0, 'nginx -t after dpkg -r' or diag $out;

($rc, $out) = run("dpkg -P $PKG");
is $rc, 0, 'dpkg -P' or diag $out;
ok !known(), 'dpkg-query: unknown after purge';
is snapshot(), $before, 'dpkg -P leaves nothing behind';
($rc, $out) = run('/usr/sbin/nginx -t');
is $rc, 0, 'nginx -t after dpkg -P' or diag $out;

# --- dpkg -i then dpkg -P directly ------------------------------------

($rc, $out) = run("dpkg -i '$DEB'");
is $rc, 0, 'dpkg -i again' or diag $out;
ok -l $LINK, 'enabled again';
($rc, $out) = run("dpkg -P $PKG");
is $rc, 0, 'dpkg -P' or diag $out;
is snapshot(), $before, 'install then purge leaves nothing behind';

cleanup();
done_testing;
