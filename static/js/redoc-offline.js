/* Keep the Redoc page on the portal's own host: Redoc's sidebar hard-codes its logo from
   cdn.redoc.ly, which the Content-Security-Policy (and closed hospital networks) would refuse.
   Loaded before the Redoc bundle, this points that one image at an empty inline SVG instead,
   whichever way the bundle sets it (attribute or property). */
(function () {
  "use strict";
  var blank = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E";
  function local(value) {
    return String(value).indexOf("https://cdn.redoc.ly/") === 0 ? blank : value;
  }
  var setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    return setAttribute.call(this, name, this.tagName === "IMG" && name === "src" ? local(value) : value);
  };
  var src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    configurable: true,
    enumerable: src.enumerable,
    get: src.get,
    set: function (value) {
      src.set.call(this, local(value));
    },
  });
})();
