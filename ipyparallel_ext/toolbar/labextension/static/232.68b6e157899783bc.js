"use strict";(self.rspackChunkipyparallel_ext=self.rspackChunkipyparallel_ext||[]).push([[232],{475(e,t,r){var o=r(601),n=r.n(o),a=r(314),i=(r.n(a))()(n());i.push([e.id,`/* The "Parallel" sidebar panel. */
.ipp-ext-panel {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  overflow-y: auto;
  padding: 8px 12px;
  min-width: 240px;
}

.ipp-ext-title {
  font-size: var(--jp-ui-font-size2);
  font-weight: 600;
  margin: 4px 0 8px;
  text-transform: uppercase;
  letter-spacing: 0.05em;
}

.ipp-ext-start {
  display: grid;
  grid-template-columns: 1fr;
  gap: 6px;
  padding-bottom: 10px;
  border-bottom: var(--jp-border-width) solid var(--jp-border-color2);
}

.ipp-ext-field {
  display: grid;
  grid-template-columns: 70px 1fr;
  align-items: center;
}

.ipp-ext-panel input,
.ipp-ext-panel select {
  background: var(--jp-input-background);
  color: var(--jp-ui-font-color1);
  border: var(--jp-border-width) solid var(--jp-border-color1);
  padding: 3px 4px;
  min-width: 0;
}

.ipp-ext-panel button {
  cursor: pointer;
}

.ipp-ext-error {
  margin: 8px 0;
  padding: 6px 8px;
  color: var(--jp-error-color0);
  background: var(--jp-error-color3);
  border-left: 3px solid var(--jp-error-color1);
  white-space: pre-wrap;
}

.ipp-ext-empty {
  color: var(--jp-ui-font-color2);
}

.ipp-ext-clusters {
  list-style: none;
  margin: 0;
  padding: 0;
}

.ipp-ext-cluster {
  padding: 8px 0;
  border-bottom: var(--jp-border-width) solid var(--jp-border-color2);
}

.ipp-ext-cluster-header {
  display: flex;
  justify-content: space-between;
  font-weight: 600;
}

.ipp-ext-cluster-id {
  font-family: var(--jp-code-font-family);
  overflow: hidden;
  text-overflow: ellipsis;
}

.ipp-ext-cluster-state {
  font-weight: normal;
  color: var(--jp-ui-font-color2);
}

.ipp-ext-cluster-state[data-state='running'] {
  color: var(--jp-success-color1);
}

.ipp-ext-cluster-details {
  color: var(--jp-ui-font-color2);
}

.ipp-ext-cluster-controls {
  display: flex;
  flex-wrap: wrap;
  gap: 4px;
  margin-top: 6px;
}

.ipp-ext-cluster-controls input {
  width: 4em;
}

/* The notebook toolbar item. */
.ipp-ext-toolbar {
  display: flex;
  align-items: center;
  gap: 4px;
  padding: 0 6px;
}

.ipp-ext-engines {
  font-size: var(--jp-ui-font-size1);
  color: var(--jp-ui-font-color1);
  white-space: nowrap;
}

.ipp-ext-toolbar button.ipp-ext-mod-on {
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color1);
}
`,""]),r.d(t,{},{A:i})},314(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",o=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),o&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),o&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,o,n,a){"string"==typeof e&&(e=[[null,e,void 0]]);var i={};if(o)for(var p=0;p<this.length;p++){var c=this[p][0];null!=c&&(i[c]=!0)}for(var s=0;s<e.length;s++){var l=[].concat(e[s]);o&&i[l[0]]||(void 0!==a&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=a),r&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=r),n&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=n):l[4]="".concat(n)),t.push(l))}},t}},601(e){e.exports=function(e){return e[1]}},72(e){var t=[];function r(e){for(var r=-1,o=0;o<t.length;o++)if(t[o].identifier===e){r=o;break}return r}function o(e,o){for(var n={},a=[],i=0;i<e.length;i++){var p=e[i],c=o.base?p[0]+o.base:p[0],s=n[c]||0,l="".concat(c," ").concat(s);n[c]=s+1;var u=r(l),d={css:p[1],media:p[2],sourceMap:p[3],supports:p[4],layer:p[5]};if(-1!==u)t[u].references++,t[u].updater(d);else{var f=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(d,o);o.byIndex=i,t.splice(i,0,{identifier:l,updater:f,references:1})}a.push(l)}return a}e.exports=function(e,n){var a=o(e=e||[],n=n||{});return function(e){e=e||[];for(var i=0;i<a.length;i++){var p=r(a[i]);t[p].references--}for(var c=o(e,n),s=0;s<a.length;s++){var l=r(a[s]);0===t[l].references&&(t[l].updater(),t.splice(l,1))}a=c}}},659(e){var t={};e.exports=function(e,r){var o=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(r)}},540(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},56(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},825(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var o,n,a;o="",r.supports&&(o+="@supports (".concat(r.supports,") {")),r.media&&(o+="@media ".concat(r.media," {")),(n=void 0!==r.layer)&&(o+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),o+=r.css,n&&(o+="}"),r.media&&(o+="}"),r.supports&&(o+="}"),(a=r.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(o,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},579(e,t,r){var o=r(72),n=r.n(o),a=r(825),i=r.n(a),p=r(659),c=r.n(p),s=r(56),l=r.n(s),u=r(540),d=r.n(u),f=r(113),v=r.n(f),x=r(475),m={};m.styleTagTransform=v(),m.setAttributes=l(),m.insert=c().bind(null,"head"),m.domAPI=i(),m.insertStyleElement=d(),n()(x.A,m),x.A&&x.A.locals&&x.A.locals}}]);