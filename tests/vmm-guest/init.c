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

static int set_addr(int s, unsigned long req, const char *ip) {
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "eth0");
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ioctl(s, req, &ifr);
}

/* 10.99.0.2/24 on eth0, then a datagram to a port nobody listens on at
 * the host's end of the tap (10.99.0.1): the host's ICMP "port
 * unreachable" coming back proves frames went out and in. */
static void net(void) {
    if (if_nametoindex("eth0") == 0)
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
