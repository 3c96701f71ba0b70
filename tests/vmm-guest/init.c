/* The init of the guest the keel-vmm end-to-end tests boot: it says it
 * runs, writes keel-vmm's boot-timer through /dev/mem, then, when it has
 * them, reads and writes a file on its virtio disk (ext4) and makes a
 * round trip over its virtio network device, and reboots, which ends the
 * VMM through its i8042. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <termios.h>
#include <unistd.h>

#define BOOT_TIMER 0xd0000000UL
#define BOOT_TIMER_MAGIC 123

/* The test made the disk an ext4 file system with hello.txt on it: the
 * guest reads that, writes written.txt, and unmounts, which flushes; the
 * test reads written.txt on the host afterwards. */
static void disk(void) {
    if (access("/dev/vda", F_OK) != 0)
        return;
    mkdir("/mnt", 0755);
    if (mount("/dev/vda", "/mnt", "ext4", 0, NULL) != 0) {
        perror("keel-vmm-guest: mount /dev/vda");
        return;
    }
    char buf[256] = {0};
    int fd = open("/mnt/hello.txt", O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) < 0)
        perror("keel-vmm-guest: /mnt/hello.txt");
    if (fd >= 0)
        close(fd);
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = 0;
    printf("keel-vmm-guest: disk says: %s\n", buf);
    const char line[] = "written by the guest\n";
    fd = open("/mnt/written.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, line, sizeof line - 1) != sizeof line - 1 || fsync(fd) != 0) {
        perror("keel-vmm-guest: /mnt/written.txt");
        return;
    }
    close(fd);
    if (umount("/mnt") != 0) {
        perror("keel-vmm-guest: umount /mnt");
        return;
    }
    printf("keel-vmm-guest: disk written and flushed\n");
}

#include <net/route.h>

static int set_addr(int s, unsigned long req, const char *ip) {
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "eth0");
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ioctl(s, req, &ifr);
}

/* The address keel-init gave a VM on a container network, from
 * `ip=ADDR::GW:MASK:NAME:eth0:off` on the command line: eth0 configured
 * from it, a default route through GW, then a page fetched from the test
 * machine (QEMU's guestfwd at 10.0.2.100:80), out through the bridge and
 * the host's masquerade. */
static int bridged(void) {
    char cmdline[4096] = {0};
    mkdir("/proc", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    char *p = n > 0 ? strstr(cmdline, " ip=") : NULL;
    if (!p)
        return 0;
    char addr[64] = {0}, gw[64] = {0}, mask[64] = {0};
    if (sscanf(p + 4, "%63[0-9.]::%63[0-9.]:%63[0-9.]:", addr, gw, mask) != 3) {
        printf("keel-vmm-guest: net: cannot read %s\n", p + 1);
        return 1;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "eth0");
    if (set_addr(s, SIOCSIFADDR, addr) || set_addr(s, SIOCSIFNETMASK, mask) ||
        ioctl(s, SIOCGIFFLAGS, &ifr)) {
        perror("keel-vmm-guest: configure eth0");
        return 1;
    }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) {
        perror("keel-vmm-guest: eth0 up");
        return 1;
    }
    struct rtentry rt = {0};
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
    struct sockaddr_in *via = (struct sockaddr_in *)&rt.rt_gateway;
    struct sockaddr_in *msk = (struct sockaddr_in *)&rt.rt_genmask;
    dst->sin_family = via->sin_family = msk->sin_family = AF_INET;
    inet_pton(AF_INET, gw, &via->sin_addr);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(s, SIOCADDRT, &rt)) {
        perror("keel-vmm-guest: default route");
        return 1;
    }
    close(s);
    printf("keel-vmm-guest: net: eth0 has %s, gateway %s\n", addr, gw);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "10.0.2.100", &server.sin_addr);
    /* The bridge's port may take a moment to forward: a few tries. */
    for (int i = 0; i < 10; i++) {
        int t = socket(AF_INET, SOCK_STREAM, 0);
        struct timeval tv = {.tv_sec = 3};
        setsockopt(t, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(t, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(t, (struct sockaddr *)&server, sizeof server) == 0) {
            const char req[] = "GET /vm.txt HTTP/1.0\r\n\r\n";
            char buf[1024] = {0};
            size_t got = 0;
            ssize_t r;
            send(t, req, sizeof req - 1, 0);
            while (got < sizeof buf - 1 && (r = recv(t, buf + got, sizeof buf - 1 - got, 0)) > 0)
                got += r;
            close(t);
            char *body = strstr(buf, "\r\n\r\n");
            printf("keel-vmm-guest: net: fetched: %s\n", body ? body + 4 : buf);
            return 1;
        }
        close(t);
        sleep(1);
    }
    printf("keel-vmm-guest: net: no page from 10.0.2.100\n");
    return 1;
}

/* 10.99.0.2/24 on eth0, then a datagram to a port nobody listens on at
 * the host's end of the tap (10.99.0.1): the host's ICMP "port
 * unreachable" coming back proves frames went out and in. */
static void net(void) {
    if (if_nametoindex("eth0") == 0 || bridged())
        return;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "eth0");
    if (set_addr(s, SIOCSIFADDR, "10.99.0.2") || set_addr(s, SIOCSIFNETMASK, "255.255.255.0") ||
        ioctl(s, SIOCGIFFLAGS, &ifr)) {
        perror("keel-vmm-guest: configure eth0");
        return;
    }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) {
        perror("keel-vmm-guest: eth0 up");
        return;
    }
    struct sockaddr_in host = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "10.99.0.1", &host.sin_addr);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&host, sizeof host)) {
        perror("keel-vmm-guest: connect");
        return;
    }
    for (int i = 0; i < 10; i++) {
        char c;
        send(s, "keel", 4, 0);
        if (recv(s, &c, 1, 0) < 0 && errno == ECONNREFUSED) {
            printf("keel-vmm-guest: net: the host answered (port unreachable)\n");
            return;
        }
    }
    printf("keel-vmm-guest: net: no answer from 10.99.0.1\n");
}

int main(void) {
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0)
        perror("keel-vmm-guest: mount /dev");
    printf("keel-vmm-guest: init running\n");
    /* Out through the serial port before the boot-timer line keel-vmm
     * prints (both reach the same log). */
    fflush(stdout);
    tcdrain(1);
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        perror("keel-vmm-guest: /dev/mem");
    } else {
        volatile unsigned char *p =
            mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, BOOT_TIMER);
        if (p == MAP_FAILED) {
            perror("keel-vmm-guest: mmap the boot timer");
        } else {
            *p = BOOT_TIMER_MAGIC;
            printf("keel-vmm-guest: boot timer written\n");
        }
    }
    disk();
    net();
    fflush(stdout);
    /* The console's output is still in the tty layer: let it reach the
     * serial port before the machine goes. */
    tcdrain(1);
    sync();
    reboot(RB_AUTOBOOT);
    return 1;
}
